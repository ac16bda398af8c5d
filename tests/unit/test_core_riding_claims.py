"""Claims riding on completion batches (core/batcher.py `Refill`, the loop's side in
core/loop.py), on the in-memory store: a drain refills its freed slots through the
statement that completes them, never above the capacity bound, and a failed or late
statement loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import psycopg
import pytest

from listener.core.attempt import AttemptConfig
from listener.core.batcher import ClaimAsk, CompletionBatcher
from listener.core.jobs import JobKind, StepReporter
from listener.core.loop import ClaimLoop, LoopConfig
from listener.core.memory_store import MemoryStore
from listener.core.observer import NullObserver
from listener.db.store import ClaimedEntry, CompletedAndClaimed
from listener.policy import RetryPolicy

pytestmark = pytest.mark.unit


class BatchedJob:
    """A job whose completion goes through a claiming batcher over the memory store.
    Tracks how many attempts run at once; `hold` (when set) keeps a riding statement open
    until it is released; `fail_next_ride` makes the next riding statement fail."""

    def __init__(self, store: MemoryStore, order: list[str] | None = None) -> None:
        self.store = store
        self.order = order if order is not None else []  # names of the kinds started
        self.running = 0
        self.most_running = 0
        self.started: list[int] = []
        self.rides = 0
        self.ride_claimed = 0
        self.fail_next_ride = False
        self.hold: asyncio.Event | None = None
        self.ride_started = asyncio.Event()
        self.gate = asyncio.Event()  # attempts finish only while it is set
        self.gate.set()
        self.batcher: CompletionBatcher[int] = CompletionBatcher(
            self._complete_batch, write_and_claim=self._complete_and_claim)

    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> int:
        self.started.append(entry.id)
        self.order.append(self.store.owner)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.001)
            await self.gate.wait()
        finally:
            self.running -= 1
        return entry.id

    async def complete(self, entry: ClaimedEntry, result: int) -> float | None:
        return await self.batcher.complete(entry, result)

    def describe(self, result: int) -> dict[str, object]:
        return {}

    async def _complete_batch(self, batch: list[tuple[ClaimedEntry, int]]
                              ) -> dict[tuple[int, int], float]:
        return {(entry.id, entry.claim_seq): 0.001 for entry, _ in batch
                if await self.store.complete(entry)}

    async def _complete_and_claim(self, batch: list[tuple[ClaimedEntry, int]],
                                  ask: ClaimAsk) -> CompletedAndClaimed:
        self.rides += 1
        self.ride_started.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_next_ride:
            self.fail_next_ride = False
            raise psycopg.OperationalError("connection lost (test)")
        latencies = await self._complete_batch(batch)
        claimed, next_due = await self.store.claim(ask.limit, ask.paused)
        self.ride_claimed += len(claimed)
        return CompletedAndClaimed(latencies, claimed, next_due)


def make_loop(kinds: Sequence[JobKind], concurrency: int) -> ClaimLoop:
    async def healthy() -> tuple[bool, str]:
        return True, "ok"

    return ClaimLoop(
        LoopConfig(concurrency=concurrency, sweep_interval_s=5.0, shutdown_grace_s=1.0),
        kinds,
        AttemptConfig(lease_s=30, max_reclaims=3, retry=RetryPolicy(max_retries=3, base_ms=800)),
        probe_for=lambda server: healthy, observer=NullObserver())


def batched_kind(name: str = "creation", order: list[str] | None = None
                 ) -> tuple[JobKind, MemoryStore, BatchedJob]:
    store = MemoryStore(name, lease_s=30)
    job = BatchedJob(store, order)
    kind = JobKind(name=name, action=name, store=store, handler=job, completions=job.batcher)
    return kind, store, job


@asynccontextmanager
async def running(loop: ClaimLoop) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 3)


async def until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


def statuses(store: MemoryStore) -> list[str]:
    return [row.status for row in store.rows.values()]


async def test_a_drain_refills_through_its_completions_within_the_capacity_bound() -> None:
    kind, store, job = batched_kind()
    for _ in range(60):
        store.add()
    loop = make_loop([kind], concurrency=4)
    async with running(loop):
        await until(lambda: statuses(store) == ["completed"] * 60)
    assert sorted(job.started) == sorted(store.rows)  # each entry once
    assert job.most_running <= 4
    # The completions claimed most of the backlog; the loop's own claims are the first
    # one and the round after the backlog ran out.
    assert job.ride_claimed >= 40
    assert store.claims - job.rides <= 4
    assert loop.counts.completed == 60


async def test_a_failed_riding_statement_claims_nothing_and_its_completions_retry() -> None:
    kind, store, job = batched_kind()
    for _ in range(12):
        store.add()
    job.fail_next_ride = True
    loop = make_loop([kind], concurrency=3)
    async with running(loop):
        await until(lambda: statuses(store) == ["completed"] * 12)
    assert sorted(job.started) == sorted(store.rows)
    assert job.most_running <= 3
    assert loop.counts.completed == 12


async def test_what_a_riding_claim_takes_after_stop_is_released_not_started() -> None:
    kind, store, job = batched_kind()
    for _ in range(10):
        store.add()
    job.hold = asyncio.Event()
    loop = make_loop([kind], concurrency=2)
    async with running(loop) as stop:
        await until(job.ride_started.is_set)
        stop.set()  # the riding statement is still open: what it claims must not start
        await asyncio.sleep(0.01)
        job.hold.set()
    assert job.ride_claimed > 0
    started = set(job.started)
    for row in store.rows.values():
        if row.id not in started:
            assert row.status == "pending" and row.lease_owner is None
            assert row.retry_count == 0  # released, no retry spent
    assert statuses(store).count("processing") == 0


async def test_a_drain_claims_ahead_and_shutdown_releases_what_never_started() -> None:
    kind, store, job = batched_kind()
    for _ in range(40):
        store.add()
    loop = make_loop([kind], concurrency=4)
    async with running(loop) as stop:
        await until(lambda: statuses(store).count("completed") >= 8)
        job.gate.clear()  # attempts hang: what was claimed ahead waits for a slot
        await until(lambda: statuses(store).count("processing") > loop.in_flight)
        assert job.most_running <= 4
        stop.set()
    started = set(job.started)
    waiting = [row for row in store.rows.values() if row.id not in started]
    assert any(row.claim_seq == 1 for row in waiting)  # some were claimed ahead, never run
    assert statuses(store).count("processing") == 0  # the hung ones and the ahead ones
    for row in waiting:
        assert row.status == "pending" and row.retry_count == 0 and row.lease_owner is None


async def test_no_riding_claim_while_another_kind_waits_for_its_share() -> None:
    order: list[str] = []
    creation, creations, job = batched_kind("creation", order)
    _, deletions, deleting = batched_kind("deletion", order)
    # A kind without riding claims (as deletions are): only the loop's rounds claim it.
    deletion = JobKind(name="deletion", action="deletion", store=deletions, handler=deleting)
    for _ in range(30):
        creations.add()
    for _ in range(6):
        deletions.add()
    loop = make_loop([creation, deletion], concurrency=2)
    async with running(loop):
        await until(lambda: statuses(creations) == ["completed"] * 30
                    and statuses(deletions) == ["completed"] * 6)
    assert len(job.started) == 30 and len(deleting.started) == 6
    # Fair shares: the deletions ran alongside the creations' backlog, not after it (rides
    # of one kind taking every freed slot would start them last).
    last_deletion = max(i for i, name in enumerate(order) if name == "deletion")
    assert last_deletion < 20
    assert job.ride_claimed > 0  # once the deletions were done, creations rode again
