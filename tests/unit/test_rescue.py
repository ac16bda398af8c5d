"""The rescuer's tick on the in-memory store: what it wakes, counts and survives."""

from __future__ import annotations

import logging
import random

import psycopg
import pytest

from listener.core.jobs import JobKind
from listener.core.memory_store import MemoryRow, MemoryStore
from listener.core.rescue import Rescuer, rescue_wait_s

pytestmark = pytest.mark.unit


class NoHandler:
    async def attempt(self, entry: object, report: object) -> None:
        raise AssertionError("not run here")

    async def complete(self, entry: object, result: object) -> float | None:
        raise AssertionError("not run here")

    def describe(self, result: object) -> dict[str, object]:
        return {}


class FlakyStore(MemoryStore):
    """A store whose rescue statement fails while `down`."""

    down = False

    async def rescue_dead(self) -> int:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        return await super().rescue_dead()


def kind(name: str, store: MemoryStore) -> JobKind:
    return JobKind(name=name, action=name, store=store, handler=NoHandler())


async def test_a_tick_makes_dead_owners_rows_due_counts_per_kind_and_wakes() -> None:
    rows: dict[int, MemoryRow] = {}
    creation = MemoryStore("me", rows=rows)
    dead = MemoryStore("dead", rows=rows)
    live = MemoryStore("live", rows=rows)
    creation.live_owners.add("live")
    for _ in range(3):
        creation.add()
    await dead.claim(2)
    await live.claim(1)
    woken: list[bool] = []
    counted: list[tuple[str, int]] = []
    rescuer = Rescuer([kind("creation", creation)], wake=lambda: woken.append(True),
                      on_rescued=lambda name, n: counted.append((name, n)))
    assert await rescuer.tick() == 2
    assert counted == [("creation", 2)] and woken == [True]
    assert await rescuer.tick() == 0  # nothing new: no wake, no count
    assert counted == [("creation", 2)] and woken == [True] and rescuer.rescued == 2


async def test_a_failing_statement_is_logged_once_and_retried_next_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore("me")
    other = MemoryStore("dead", rows=store.rows)
    store.add()
    await other.claim(1)
    store.down = True
    rescuer = Rescuer([kind("creation", store)], wake=lambda: None)
    with caplog.at_level(logging.INFO, logger="listener.rescue"):
        for _ in range(3):
            assert await rescuer.tick() == 0
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failures) == 1
        store.down = False
        assert await rescuer.tick() == 1
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_the_period_is_jittered_around_one_second() -> None:
    rng = random.Random(3)
    waits = [rescue_wait_s(rng=rng) for _ in range(200)]
    assert 0.75 <= min(waits) < 0.85 and 1.15 < max(waits) <= 1.25
