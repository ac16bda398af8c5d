"""Placement (SPEC §10): lowest used share among active, healthy servers with room left."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from listener.fleet.placement import (
    Placed,
    ServerLoad,
    Wait,
    WaitReason,
    loads,
    place,
    place_many,
)
from listener.fleet.servers import ServerSpec, ServerState

pytestmark = pytest.mark.unit

A, D = ServerState.ACTIVE, ServerState.DRAINING


def S(name: str, capacity: int | None, used: int, state: ServerState = A,
      off: bool = False) -> ServerLoad:
    return ServerLoad(name, capacity, state, used, off)


CHOICES = [
    ("one empty server", [S("a", 10, 0)], "a"),
    ("lowest share wins", [S("a", 10, 5), S("b", 100, 20)], "b"),
    ("share, not count", [S("a", 10, 2), S("b", 100, 30)], "a"),
    ("equal share: fewer used", [S("a", 10, 5), S("b", 20, 10)], "a"),
    ("equal share and count: name", [S("b", 10, 3), S("a", 10, 3)], "a"),
    ("full one skipped", [S("a", 10, 10), S("b", 10, 9)], "b"),
    ("over capacity skipped", [S("a", 10, 12), S("b", 10, 9)], "b"),
    ("draining skipped though empty", [S("a", 10, 0, D), S("b", 10, 9)], "b"),
    ("backing off skipped though empty", [S("a", 10, 0, off=True), S("b", 10, 9)], "b"),
    ("unlimited is share 0", [S("a", None, 500), S("b", 10, 1)], "a"),
    ("unlimited vs empty bounded: fewer used", [S("a", None, 3), S("b", 10, 0)], "b"),
    ("two unlimited: fewer used", [S("a", None, 7), S("b", None, 6)], "b"),
    ("two unlimited tie: name", [S("z", None, 0), S("m", None, 0)], "m"),
    ("capacity 1 with room", [S("a", 1, 0)], "a"),
]


@pytest.mark.parametrize(("servers", "expected"), [c[1:] for c in CHOICES],
                         ids=[c[0] for c in CHOICES])
def test_the_choice(servers: list[ServerLoad], expected: str) -> None:
    assert place(servers) == Placed(expected)


WAITS = [
    ("every server draining", [S("a", 10, 0, D), S("b", None, 0, D)], WaitReason.NONE_ACTIVE),
    ("no server at all", [], WaitReason.NONE_ACTIVE),
    ("every active server full", [S("a", 2, 2), S("b", 3, 3), S("c", None, 0, D)],
     WaitReason.ALL_FULL),
    ("full beats backing off", [S("a", 2, 2, off=True), S("b", 3, 3)], WaitReason.ALL_FULL),
    ("room only where backing off", [S("a", 2, 0, off=True), S("b", 3, 3)],
     WaitReason.ALL_BACKING_OFF),
    ("every server backing off", [S("a", None, 0, off=True), S("b", 3, 0, off=True)],
     WaitReason.ALL_BACKING_OFF),
]


@pytest.mark.parametrize(("servers", "reason"), [w[1:] for w in WAITS],
                         ids=[w[0] for w in WAITS])
def test_the_wait_and_its_reason(servers: list[ServerLoad], reason: WaitReason) -> None:
    answer = place(servers)
    assert isinstance(answer, Wait) and answer.reason is reason
    assert "\n" not in answer.message


def test_all_full_message_names_each_server_and_its_usage() -> None:
    answer = place([S("a", 2, 2), S("b", 3, 3)])
    assert isinstance(answer, Wait)
    assert "a 2/2" in answer.message and "b 3/3" in answer.message


def test_place_many_fills_by_share_within_capacity_then_waits() -> None:
    answers = place_many([S("a", 2, 0), S("b", 4, 0), S("c", 10, 0, D)], 8)
    placed = Counter(a.server for a in answers if isinstance(a, Placed))
    assert placed == {"a": 2, "b": 4}
    assert [type(a) for a in answers] == [Placed] * 6 + [Wait] * 2
    # Shares stay level while filling: a (cap 2) gets its second only after b reaches 2/4.
    assert [a.server for a in answers[:6] if isinstance(a, Placed)] == [
        "a", "b", "b", "a", "b", "b"]


def test_loads_joins_config_usage_and_health() -> None:
    specs = [ServerSpec("a", "http://a", SecretStr("k"), 5),
             ServerSpec("b", "http://b", SecretStr("k"), None, D)]
    assert loads(specs, {"a": 3, "gone": 9}, {"b"}) == [
        ServerLoad("a", 5, A, 3, False), ServerLoad("b", None, D, 0, True)]


# --- properties -----------------------------------------------------------------------------

server_loads = st.lists(
    st.builds(
        ServerLoad,
        name=st.sampled_from("abcdefgh"),
        capacity=st.one_of(st.none(), st.integers(1, 50)),
        state=st.sampled_from([A, D]),
        used=st.integers(0, 60),
        backing_off=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda s: s.name,
)


@settings(max_examples=300, deadline=None)
@given(server_loads)
def test_a_choice_is_always_eligible_and_minimal(servers: list[ServerLoad]) -> None:
    eligible = [s for s in servers if s.state is A and not s.backing_off and not s.full]
    answer = place(servers)
    if not eligible:
        assert isinstance(answer, Wait)
        return
    assert isinstance(answer, Placed)
    chosen = next(s for s in servers if s.name == answer.server)
    assert chosen in eligible
    for other in eligible:
        assert (chosen.share, chosen.used, chosen.name) <= (other.share, other.used, other.name)


@settings(max_examples=300, deadline=None)
@given(server_loads)
def test_the_choice_does_not_depend_on_the_order_given(servers: list[ServerLoad]) -> None:
    assert place(servers) == place(list(reversed(servers)))


@settings(max_examples=200, deadline=None)
@given(server_loads, st.integers(0, 40))
def test_place_many_never_exceeds_a_capacity(servers: list[ServerLoad], count: int) -> None:
    answers = place_many(servers, count)
    assert len(answers) == count
    added = Counter(a.server for a in answers if isinstance(a, Placed))
    for s in servers:
        if s.capacity is not None:
            assert s.used + added[s.name] <= max(s.capacity, s.used)
        if s.state is D or s.backing_off:
            assert added[s.name] == 0
    first_wait = next((i for i, a in enumerate(answers) if isinstance(a, Wait)), count)
    assert all(isinstance(a, Wait) for a in answers[first_wait:])
