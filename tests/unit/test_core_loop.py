"""The claim loop's branches on the in-memory store with fake jobs: no PostgreSQL, no HTTP.

Each test bounds itself in time; together they take well under the 5 s budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest

from listener.core import loop as loop_module
from listener.core.attempt import AttemptConfig
from listener.core.breaker import Probe
from listener.core.jobs import JobKind, StepReporter
from listener.core.loop import ClaimLoop, LoopConfig, refill_threshold
from listener.core.memory_store import MemoryStore
from listener.core.observer import NullObserver
from listener.db.store import ClaimedEntry
from listener.evolution.errors import AuthError
from listener.policy import RetryPolicy

pytestmark = pytest.mark.unit


class FakeJob:
    """Records which entries it started; finishes when `gate` opens; fails with `error`
    while one is set."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None
        self.started: list[int] = []

    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> int:
        self.started.append(entry.id)
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return entry.id

    async def complete(self, entry: ClaimedEntry, result: int) -> float | None:
        return 0.001 if await self.store.complete(entry) else None

    def describe(self, result: int) -> dict[str, object]:
        return {}


def kind_of(name: str, store: MemoryStore | None = None) -> tuple[JobKind, MemoryStore, FakeJob]:
    store = store or MemoryStore(name, lease_s=30)
    job = FakeJob(store)
    return JobKind(name=name, action=name, store=store, handler=job), store, job


def make_loop(kinds: Sequence[JobKind], *, concurrency: int = 2, grace_s: float = 1.0,
              probe: Probe | None = None, alive: asyncio.Event | None = None) -> ClaimLoop:
    async def healthy() -> tuple[bool, str]:
        return True, "ok"

    return ClaimLoop(
        LoopConfig(concurrency=concurrency, sweep_interval_s=5.0, shutdown_grace_s=grace_s),
        kinds,
        AttemptConfig(lease_s=30, max_reclaims=3, retry=RetryPolicy(max_retries=3, base_ms=800)),
        probe_for=lambda server: probe or healthy,
        observer=NullObserver(),
        alive=alive,
    )


@asynccontextmanager
async def running(loop: ClaimLoop) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 3)


async def until(predicate: Callable[[], bool], timeout_s: float = 1.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


def statuses(store: MemoryStore) -> list[str]:
    return [row.status for row in store.rows.values()]


async def test_claims_only_free_capacity_and_a_finishing_task_wakes_the_loop() -> None:
    kind, store, job = kind_of("creation")
    for _ in range(5):
        store.add()
    job.gate.clear()
    loop = make_loop([kind], concurrency=2)
    async with running(loop):
        await until(lambda: loop.in_flight == 2)
        await asyncio.sleep(0.05)
        assert statuses(store).count("processing") == 2 and len(job.started) == 2
        job.gate.set()  # the sweep interval is 5 s: only finishing tasks can wake the loop
        await until(lambda: statuses(store) == ["completed"] * 5)
    assert loop.counts.completed == 5


async def test_nothing_is_claimed_while_the_liveness_lock_is_not_held() -> None:
    kind, store, _job = kind_of("creation")
    store.add()
    alive = asyncio.Event()
    loop = make_loop([kind], alive=alive)
    async with running(loop):
        await asyncio.sleep(0.1)
        assert store.claims == 0 and not loop.first_sweep_done.is_set()
        alive.set()
        loop.wake()
        await until(lambda: statuses(store) == ["completed"])
        alive.clear()  # lost again: what is due now stays for the other replicas
        store.add()
        loop.wake()
        await asyncio.sleep(0.1)
    assert statuses(store) == ["completed", "pending"]


async def test_due_but_locked_rows_back_off_instead_of_polling() -> None:
    kind, store, _job = kind_of("creation")
    row = store.add()
    store.locked.add(row.id)
    loop = make_loop([kind])
    async with running(loop):
        await asyncio.sleep(0.4)
        # 50, 100, 200 ms ...: about 4 claims; at the 20 ms idle floor it would be ~20.
        assert 2 <= store.claims <= 6, store.claims
        store.locked.clear()
        loop.wake()
        await until(lambda: statuses(store) == ["completed"])


async def test_an_open_breaker_stops_claims_until_its_probe_closes_it() -> None:
    kind, store, job = kind_of("creation")
    store.add()
    job.error = AuthError("bad key", operation="create_instance", status=401)
    api_back = asyncio.Event()

    async def probe() -> tuple[bool, str]:
        return api_back.is_set(), "down"

    loop = make_loop([kind], probe=probe)
    async with running(loop):
        await until(lambda: loop.backoff_reason() is not None)
        await until(lambda: loop.counts.released == 1)
        claims = store.claims
        store.add()
        loop.wake()
        await asyncio.sleep(0.3)
        assert store.claims == claims  # nothing claimed while open
        assert [row.retry_count for row in store.rows.values()] == [0, 0]  # none spent
        job.error = None
        api_back.set()
        await until(lambda: loop.backoff_reason() is None, timeout_s=2)
        await until(lambda: statuses(store) == ["completed", "completed"])


async def test_drain_processes_what_is_due_once_and_returns() -> None:
    kind, store, _job = kind_of("creation")
    for _ in range(3):
        store.add()
    store.add(due_in_s=60)
    loop = make_loop([kind], concurrency=2)
    counts = await asyncio.wait_for(loop.drain(), 2)
    assert (counts.completed, counts.failed) == (3, 0)
    assert statuses(store) == ["completed"] * 3 + ["pending"]


async def test_shutdown_releases_unfinished_work_without_spending_a_retry() -> None:
    kind, store, job = kind_of("creation")
    store.add()
    job.gate.clear()  # never finishes
    loop = make_loop([kind], grace_s=0.1)
    async with running(loop):
        await until(lambda: loop.in_flight == 1)
    [row] = store.rows.values()
    assert (row.status, row.retry_count, row.lease_owner) == ("pending", 0, None)
    assert row.next_attempt_at <= store.clock()  # due at once, for whoever is alive
    assert loop.counts.released == 1


async def test_shutdown_lets_work_finish_inside_the_grace() -> None:
    kind, store, job = kind_of("creation")
    store.add()
    job.gate.clear()
    loop = make_loop([kind], grace_s=2.0)
    async with running(loop) as stop:
        await until(lambda: loop.in_flight == 1)
        stop.set()
        asyncio.get_running_loop().call_later(0.05, job.gate.set)
    assert statuses(store) == ["completed"] and loop.counts.released == 0


async def test_two_kinds_share_one_capacity_bound_and_both_are_dispatched() -> None:
    creations, creation_store, creation_job = kind_of("creation")
    deletions, deletion_store, deletion_job = kind_of("deletion")
    for _ in range(4):
        creation_store.add()
        deletion_store.add()
    creation_job.gate.clear()
    deletion_job.gate.clear()
    loop = make_loop([creations, deletions], concurrency=4)
    async with running(loop):
        await until(lambda: loop.in_flight == 4)
        await asyncio.sleep(0.05)
        assert loop.in_flight == 4  # never more than the bound across both kinds
        assert (len(creation_job.started), len(deletion_job.started)) == (2, 2)
        creation_job.gate.set()
        deletion_job.gate.set()
        await until(lambda: statuses(creation_store) + statuses(deletion_store)
                    == ["completed"] * 8)


class GatedJob(FakeJob):
    """Each entry finishes when its own gate opens."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.gates: dict[int, asyncio.Event] = {}
        self.all_open = False

    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> int:
        self.started.append(entry.id)
        if not self.all_open:
            await self.gates.setdefault(entry.id, asyncio.Event()).wait()
        return entry.id

    def open_all(self) -> None:
        self.all_open = True
        self.finish(len(self.gates))

    def finish(self, count: int) -> None:
        waiting = [gate for gate in self.gates.values() if not gate.is_set()]
        for gate in waiting[:count]:
            gate.set()


def gated_loop(rows: int, concurrency: int) -> tuple[ClaimLoop, MemoryStore, GatedJob]:
    store = MemoryStore("creation", lease_s=30)
    job = GatedJob(store)
    for _ in range(rows):
        store.add()
    kind = JobKind(name="creation", action="creation", store=store, handler=job)
    return make_loop([kind], concurrency=concurrency), store, job


@pytest.mark.parametrize(("concurrency", "threshold"), [(1, 1), (2, 1), (3, 2), (16, 8)])
def test_refill_threshold_is_half_the_slots_and_at_least_one(concurrency: int,
                                                             threshold: int) -> None:
    assert refill_threshold(concurrency) == threshold


async def test_while_capacity_bound_a_claim_waits_for_half_the_slots_or_the_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_module, "REFILL_DELAY_S", 0.3)  # long enough to see the wait
    monkeypatch.setattr(loop_module, "REFILL_SLOW_ATTEMPT_S", 60.0)  # held gates are "short"
    loop, store, job = gated_loop(12, concurrency=4)
    async with running(loop):
        await until(lambda: loop.in_flight == 4)
        claims = store.claims
        job.finish(1)  # one free slot of four: below half, the claim waits
        await until(lambda: loop.in_flight == 3)
        await asyncio.sleep(0.1)
        assert (store.claims, loop.in_flight) == (claims, 3)
        await until(lambda: loop.in_flight == 4, timeout_s=1.0)  # ... until the delay
        assert store.claims == claims + 1
        claims = store.claims
        job.finish(2)  # half the slots at once: one claim of two, without the delay
        await until(lambda: len(job.started) == 7, timeout_s=0.2)
        assert (store.claims, loop.in_flight) == (claims + 1, 4)
        job.open_all()
        await until(lambda: statuses(store) == ["completed"] * 12, timeout_s=2.0)


async def test_while_capacity_bound_slow_attempts_refill_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_module, "REFILL_DELAY_S", 5.0)
    monkeypatch.setattr(loop_module, "REFILL_SLOW_ATTEMPT_S", 0.01)
    loop, store, job = gated_loop(8, concurrency=4)
    async with running(loop):
        await until(lambda: loop.in_flight == 4)
        await asyncio.sleep(0.2)  # the first attempts take 200 ms or more: "slow"
        job.finish(1)
        await until(lambda: statuses(store).count("completed") == 1)
        # one free slot of four, the delay 5 s: only the slow attempts make it claim now
        await until(lambda: len(job.started) == 5, timeout_s=1.0)
        job.open_all()
        await until(lambda: statuses(store) == ["completed"] * 8, timeout_s=2.0)
