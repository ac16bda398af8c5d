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
        self.started_claims: list[tuple[int, int]] = []  # (id, claim_seq) of each start
        self.rides = 0
        self.ride_claimed = 0
        self.fail_next_ride = False
        self.fail_next_attempt = False  # the next attempt raises a transient error
        self.hold: asyncio.Event | None = None
        self.ride_started = asyncio.Event()
        self.gate = asyncio.Event()  # attempts finish only while it is set
        self.gate.set()
        self.batcher: CompletionBatcher[int] = CompletionBatcher(
            self._complete_batch, write_and_claim=self._complete_and_claim)

    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> int:
        self.started.append(entry.id)
        self.started_claims.append((entry.id, entry.claim_seq))
        self.order.append(self.store.owner)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.001)
            await self.gate.wait()
            if self.fail_next_attempt:
                self.fail_next_attempt = False
                raise RuntimeError("transient (test)")
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


def make_loop(kinds: Sequence[JobKind], concurrency: int, lease_s: float = 30,
              alive: asyncio.Event | None = None, retry_base_ms: int = 800) -> ClaimLoop:
    """A loop whose kinds' notifications come on channels named after them."""
    async def healthy() -> tuple[bool, str]:
        return True, "ok"

    return ClaimLoop(
        LoopConfig(concurrency=concurrency, sweep_interval_s=5.0, shutdown_grace_s=1.0),
        kinds,
        AttemptConfig(lease_s=lease_s, max_reclaims=3,
                      retry=RetryPolicy(max_retries=3, base_ms=retry_base_ms)),
        probe_for=lambda server: healthy, observer=NullObserver(), alive=alive,
        kind_of_channel={kind.name: kind.name for kind in kinds})


def batched_kind(name: str = "creation", order: list[str] | None = None
                 ) -> tuple[JobKind, MemoryStore, BatchedJob]:
    store = MemoryStore(name, lease_s=30)
    job = BatchedJob(store, order)
    kind = JobKind(name=name, action=name, store=store, handler=job, completions=job.batcher)
    return kind, store, job


def two_kinds(order: list[str]) -> tuple[JobKind, MemoryStore, BatchedJob,
                                          JobKind, MemoryStore, BatchedJob]:
    """Creations with riding claims, and deletions without (as in the service): only the
    loop's rounds claim those."""
    creation, creations, job = batched_kind("creation", order)
    _, deletions, deleting = batched_kind("deletion", order)
    deletion = JobKind(name="deletion", action="deletion", store=deletions, handler=deleting)
    return creation, creations, job, deletion, deletions, deleting


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
    creation, creations, job, deletion, deletions, deleting = two_kinds(order)
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


async def hang_with_entries_claimed_ahead(loop: ClaimLoop, store: MemoryStore,
                                          job: BatchedJob) -> set[int]:
    """Let a drain run a little, then make attempts hang until every slot holds a hung
    attempt (none finishing: no slot can free) and some entries wait in the claimed-ahead
    queue; the ids of those waiting entries."""
    await until(lambda: statuses(store).count("completed") >= 8)
    job.gate.clear()
    await until(lambda: job.running == loop.in_flight == loop.config.concurrency
                and statuses(store).count("processing") > job.running)
    started = set(job.started)
    return {row.id for row in store.rows.values()
            if row.status == "processing" and row.id not in started}


async def test_entries_claimed_ahead_go_back_when_the_liveness_lock_is_lost() -> None:
    kind, store, job = batched_kind()
    for _ in range(40):
        store.add()
    alive = asyncio.Event()
    alive.set()
    loop = make_loop([kind], concurrency=4, alive=alive)
    async with running(loop):
        waiting = await hang_with_entries_claimed_ahead(loop, store, job)
        alive.clear()  # the other replicas will rescue our rows: none may start here later
        loop.wake()
        await until(lambda: all(store.rows[i].status == "pending" for i in waiting))
        assert all(store.rows[i].retry_count == 0 for i in waiting)  # no retry spent
        started_while_down = len(job.started)
        alive.set()
        loop.wake()
        job.gate.set()
        await until(lambda: statuses(store) == ["completed"] * 40)
    assert started_while_down == len(set(job.started[:started_while_down]))
    assert sorted(job.started) == sorted(store.rows)  # each entry started once


async def test_entries_claimed_ahead_go_back_when_no_slot_frees_within_the_bound() -> None:
    kind, store, job = batched_kind()
    for _ in range(40):
        store.add()
    loop = make_loop([kind], concurrency=4, lease_s=1.0)  # bound: 0.1 s
    async with running(loop):
        waiting = await hang_with_entries_claimed_ahead(loop, store, job)
        claims = {i: store.rows[i].claim_seq for i in waiting}

        def given_back() -> bool:  # pending again, or already claimed anew by a free slot
            return all(store.rows[i].status == "pending" or store.rows[i].claim_seq != seq
                       for i, seq in claims.items())

        # The slots hang: the waiting claims end within about the bound, not when a slot
        # frees (their lease would be running out by then).
        await until(given_back, timeout_s=1.0)
        job.gate.set()
        await until(lambda: statuses(store) == ["completed"] * 40)
    assert not set(claims.items()) & set(job.started_claims)  # never started under them
    assert all(store.rows[i].retry_count == 0 for i in waiting)  # no retry spent
    assert sorted(job.started) == sorted(store.rows)


async def test_a_deletion_notified_during_a_creation_drain_is_not_left_for_its_end() -> None:
    order: list[str] = []
    creation, creations, job, deletion, deletions, deleting = two_kinds(order)
    for _ in range(400):
        creations.add()
    loop = make_loop([creation, deletion], concurrency=4)
    async with running(loop):
        await until(lambda: job.ride_claimed >= 20)  # the drain refills through its rides
        for _ in range(3):
            deletions.add()
        loop.notified("deletion")  # what the deletion queue's notification does
        await until(lambda: statuses(deletions) == ["completed"] * 3)
        creations_done = statuses(creations).count("completed")
        await until(lambda: statuses(creations) == ["completed"] * 400, timeout_s=10)
    assert creations_done < 300  # served alongside the backlog, not after it
    assert len(deleting.started) == 3


async def test_a_failing_take_still_resumes_the_batch_it_completed() -> None:
    """The loop's side raising after the statement committed: the completed entries'
    tasks must not hang (they hold the shutdown open)."""

    class BrokenRefill:
        def ask(self, batch: Sequence[ClaimedEntry]) -> ClaimAsk | None:
            return ClaimAsk(limit=2, paused=(), slots=0, handed=())

        async def take(self, ask: ClaimAsk, claimed: list[ClaimedEntry],
                       next_due_s: float | None) -> None:
            raise RuntimeError("bug in the loop (test)")

        def cancel(self, ask: ClaimAsk) -> None:
            raise AssertionError("the statement committed: nothing to cancel")

    _, store, job = batched_kind()
    row = store.add()
    store.add()
    job.batcher.refill = BrokenRefill()
    (entry,), _ = await store.claim(1, ())
    latency = await asyncio.wait_for(job.batcher.complete(entry, 1), 1.0)
    assert latency is not None
    assert store.rows[row.id].status == "completed"


async def test_a_deletion_retry_falling_due_during_a_creation_drain_is_served_in_it() -> None:
    order: list[str] = []
    creation, creations, _, deletion, deletions, deleting = two_kinds(order)
    for _ in range(1000):
        creations.add()
    deletions.add()
    deleting.fail_next_attempt = True  # its first attempt fails: a retry due in 50 ms
    loop = make_loop([creation, deletion], concurrency=4, retry_base_ms=50)
    async with running(loop):
        await until(lambda: statuses(deletions) == ["completed"], timeout_s=20)
        creations_done = statuses(creations).count("completed")
        await until(lambda: statuses(creations) == ["completed"] * 1000, timeout_s=30)
    assert len(deleting.started) == 2  # the attempt and its retry
    # The retry's due time woke a round that gave deletions their share; riding claims
    # alone would have left it for the end of the backlog.
    assert creations_done < 800, creations_done


async def test_a_replicas_own_retry_notification_does_not_mark_that_kind_due() -> None:
    """A settle's NOTIFY comes back to the replica that sent it: the retry's due time is
    known, so it must not stop the riding claims for a round that finds nothing due."""
    order: list[str] = []
    creation, creations, job, deletion, deletions, deleting = two_kinds(order)
    for _ in range(1500):
        creations.add()
    row = deletions.add()
    deleting.fail_next_attempt = True  # retried in 60 s: not due during this test
    loop = make_loop([creation, deletion], concurrency=4, retry_base_ms=60_000)
    async with running(loop):
        await until(lambda: deletions.rows[row.id].retry_count == 1, timeout_s=5)
        await until(lambda: job.ride_claimed >= 20, timeout_s=5)  # riding again
        claims_before = deletions.claims
        loop.notified("deletion", row.id)  # what our own retry statement's NOTIFY does
        await asyncio.sleep(0.2)
        claims_after = deletions.claims
        other = deletions.add()
        loop.notified("deletion", other.id)  # someone else's row: deletions are due
        await until(lambda: deletions.rows[other.id].status == "completed", timeout_s=5)
    assert claims_after == claims_before, "our own NOTIFY cost a claim of deletions"
