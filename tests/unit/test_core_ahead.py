"""What claimed-ahead entries do (core/ahead.py): start oldest first into free slots, and
go back instead of starting late or on a paused server."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest

from listener.core.ahead import ClaimedAhead, max_wait_s
from listener.core.jobs import JobKind
from listener.core.memory_store import MemoryStore
from listener.db.store import ClaimedEntry

pytestmark = pytest.mark.unit


def kind(name: str) -> JobKind:
    handler: Any = object()  # never called: only the name matters here
    return JobKind(name=name, action=name, store=MemoryStore(name, lease_s=30),
                   handler=handler)


def entry(i: int, server: str | None = None) -> ClaimedEntry:
    return ClaimedEntry(i, uuid.uuid4(), 0, 1, 0, False,
                        datetime.datetime.now(datetime.UTC), server)


def ids(held: list[tuple[JobKind, ClaimedEntry]]) -> list[int]:
    return [e.id for _, e in held]


def test_the_wait_bound_is_a_second_or_a_tenth_of_a_short_lease() -> None:
    assert max_wait_s(60) == 1.0
    assert max_wait_s(5) == pytest.approx(0.5)


def test_fresh_entries_start_oldest_first_up_to_the_free_slots_and_the_rest_stay() -> None:
    creation = kind("creation")
    ahead = ClaimedAhead(max_wait_s=1.0)
    ahead.put(creation, [entry(1), entry(2)], now=10.0)
    ahead.put(creation, [entry(3)], now=10.2)
    taken = ahead.take(now=10.5, free=2, paused=())
    assert ids(taken.start) == [1, 2] and taken.give_back == []
    assert len(ahead) == 1
    assert ids(ahead.take(now=10.6, free=5, paused=()).start) == [3]
    assert len(ahead) == 0


def test_an_entry_that_waited_past_the_bound_goes_back_even_with_a_free_slot() -> None:
    creation = kind("creation")
    ahead = ClaimedAhead(max_wait_s=1.0)
    ahead.put(creation, [entry(1)], now=10.0)
    ahead.put(creation, [entry(2)], now=10.8)
    taken = ahead.take(now=11.5, free=4, paused=())
    assert ids(taken.give_back) == [1] and ids(taken.start) == [2]


def test_an_entry_on_a_paused_server_goes_back_and_unplaced_ones_start() -> None:
    creation = kind("creation")
    ahead = ClaimedAhead(max_wait_s=1.0)
    ahead.put(creation, [entry(1, "evo-a"), entry(2, "evo-b"), entry(3)], now=10.0)
    taken = ahead.take(now=10.1, free=4, paused={"evo-a"})
    assert ids(taken.give_back) == [1] and ids(taken.start) == [2, 3]


def test_take_all_empties_the_queue() -> None:
    creation = kind("creation")
    ahead = ClaimedAhead(max_wait_s=1.0)
    ahead.put(creation, [entry(1), entry(2)], now=10.0)
    assert ids(ahead.take_all()) == [1, 2]
    assert len(ahead) == 0 and ahead.take_all() == []


def test_next_expiry_is_when_the_oldest_entry_reaches_its_bound() -> None:
    creation = kind("creation")
    ahead = ClaimedAhead(max_wait_s=1.0)
    assert ahead.next_expiry() is None
    ahead.put(creation, [entry(1)], now=10.0)
    ahead.put(creation, [entry(2)], now=10.4)
    assert ahead.next_expiry() == pytest.approx(11.0)
    taken = ahead.take(now=11.0, free=0, paused=())  # exactly at the bound: goes back
    assert ids(taken.give_back) == [1]
    assert ahead.next_expiry() == pytest.approx(11.4)
