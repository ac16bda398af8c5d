"""The loop: wait for the earliest wake-up, claim up to free capacity, provision, settle.

Wake-ups: a notification, a finished task (capacity freed, maybe a retry scheduled), the next
due row read from the table (a retry or a lease to rescue, so every replica knows), the
sweep interval, a reconnect. The table is the truth; the loop always claims from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from listener.db.store import ClaimedEntry, CompletionBatcher, InstanceRecord, QueueStore
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import EvolutionError
from listener.ops.metrics import Metrics
from listener.policy import (
    FailureKind,
    OutageDetector,
    RateLimitPause,
    RetryPolicy,
    Verdict,
    classify,
    decide,
    rate_limit_pause_s,
    reclaim_failure_message,
    reclaim_limit_exceeded,
)
from listener.provision import Provisioner

log = logging.getLogger("listener.worker")
T = TypeVar("T")

DB_ERRORS = (psycopg.Error, PoolTimeout, OSError)
DB_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
MIN_IDLE_WAIT_S = 0.02
LOCKED_ROW_BACKOFF_S = 0.05  # doubling to 1.6 s while due rows stay locked elsewhere
SHUTDOWN_RELEASE_BOUND_S = 5.0
STALL_LIMIT_S = 60.0  # pool wait (10 s) + tcp_user_timeout (10 s) end a healthy claim sooner
PROBE_TIMEOUT_S = 2.5
PROBE_RESULT_TTL_S = 1.0


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int
    sweep_interval_s: float
    lease_s: float
    max_reclaims: int
    shutdown_grace_s: float
    retry: RetryPolicy
    webhook_url: str
    webhook_events: tuple[str, ...]


@dataclass
class DrainCounts:
    completed: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0


def _is_connectivity_error(error: BaseException) -> bool:
    """The database could not be reached or the connection broke (worth waiting for)."""
    return isinstance(error, psycopg.OperationalError | PoolTimeout | OSError)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:500]


class Worker:
    """One replica's processing loop. `run()` returns after a graceful shutdown."""

    def __init__(
        self,
        config: WorkerConfig,
        store: QueueStore,
        client: EvolutionClient,
        provisioner: Provisioner,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.provisioner = provisioner
        self.metrics = metrics
        self.outage = OutageDetector()
        self.rate_pause = RateLimitPause()
        self.counts = DrainCounts()
        self.db_error: str | None = None
        self.first_sweep_done = asyncio.Event()
        self._wake = asyncio.Event()
        self._capacity_bound = False
        self._draining = False
        self._locked_waits = 0
        self._completions = CompletionBatcher(
            store, config.webhook_url, list(config.webhook_events)
        )
        self._sweep_requested = True
        self._inflight: dict[asyncio.Task[None], ClaimedEntry] = {}
        self._probe_task: asyncio.Task[tuple[bool, str]] | None = None
        self._probe_loop: asyncio.Task[None] | None = None
        self._last_probe: tuple[float, bool, str] | None = None
        self._busy_since: float | None = None

    # --- signals from outside ---------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def request_sweep(self) -> None:
        """After a (re)connect: notifications may have been lost; look at the table."""
        self._sweep_requested = True
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def stalled(self, limit_s: float = STALL_LIMIT_S) -> bool:
        """True when a claim round has been stuck for longer than `limit_s` (a hung query
        that no timeout ended): the watchdog stops pinging and systemd restarts us."""
        busy_since = self._busy_since
        return busy_since is not None and time.monotonic() - busy_since > limit_s

    def backoff_reason(self) -> str | None:
        return self.outage.reason

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        next_sweep = time.monotonic()
        try:
            while not stop.is_set():
                self._wake.clear()
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep_requested = True
                if self.outage.is_open:
                    await self._wait(stop, self.config.sweep_interval_s)
                    continue
                paused = self.rate_pause.remaining_s(now)
                if paused > 0:
                    await self._wait(stop, paused)
                    continue
                self._busy_since = time.monotonic()
                try:
                    timeout = await self._claim_round()
                except DB_ERRORS as error:
                    self._db_failed(error)
                    await self._wait(stop, 1.0)
                    continue
                finally:
                    self._busy_since = None
                if self._sweep_requested:
                    self._sweep_requested = False
                    self.metrics.sweeps.inc()
                    next_sweep = time.monotonic() + self.config.sweep_interval_s
                    self.first_sweep_done.set()
                timeout = min(timeout, max(0.0, next_sweep - time.monotonic()))
                await self._wait(stop, max(timeout, MIN_IDLE_WAIT_S))
        finally:
            await self._shutdown()

    async def _claim_round(self) -> float:
        """Claim until nothing is due or capacity is full; return how long to sleep."""
        while True:
            free = self.config.concurrency - len(self._inflight)
            if free <= 0:
                self._capacity_bound = True  # a finishing task wakes us
                return self.config.sweep_interval_s
            entries, next_due_s = await self.store.claim(free)
            self._db_ok()
            for entry in entries:
                self._dispatch(entry)
            if len(entries) == free:
                continue
            self._capacity_bound = False
            if next_due_s is None:
                return self.config.sweep_interval_s
            if next_due_s <= 0 and not entries:
                # Due but not ours to take: locked by another replica's claim or an open
                # transaction. Back off instead of polling at the idle floor.
                self._locked_waits = min(self._locked_waits + 1, 6)
                return float(LOCKED_ROW_BACKOFF_S * 2 ** (self._locked_waits - 1))
            self._locked_waits = 0
            return max(0.0, next_due_s)

    async def _wait(self, stop: asyncio.Event, delay_s: float) -> None:
        if stop.is_set() or self._wake.is_set():
            return
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _dispatch(self, entry: ClaimedEntry) -> None:
        self.metrics.claimed.inc()
        task = asyncio.create_task(self._process(entry), name=f"provision-{entry.user_id}")
        self._inflight[task] = entry
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("provisioning task crashed", extra={"error": _one_line(task.exception())})  # type: ignore[arg-type]
        # Freed capacity matters only if the last claim was limited by it (more may be due);
        # otherwise waking would only cost a claim that finds nothing.
        if self._capacity_bound or self._draining:
            self._wake.set()

    # --- one entry --------------------------------------------------------------------------

    async def process_entry(self, entry: ClaimedEntry,
                            echo: Callable[[str], None] | None = None) -> None:
        """Provision one already-claimed entry (the `provision` command), printing steps."""
        await self._process(entry, echo)

    async def drain(self) -> DrainCounts:
        """Process every entry due now, once, then return (the `drain` command)."""
        self._draining = True
        while True:
            self._wake.clear()
            blocked = self.outage.is_open or self.rate_pause.remaining_s(time.monotonic()) > 0
            entries: list[ClaimedEntry] = []
            free = self.config.concurrency - len(self._inflight)
            if not blocked and free > 0:
                entries, _next_due = await self.store.claim(free)
                for entry in entries:
                    self._dispatch(entry)
            if not self._inflight and (blocked or not entries):
                break
            if self._inflight:
                await self._wake.wait()
        if self._probe_loop is not None:
            self._probe_loop.cancel()
        return self.counts

    async def _process(self, entry: ClaimedEntry,
                       echo: Callable[[str], None] | None = None) -> None:
        fields = {"user_id": str(entry.user_id), "attempt": entry.retry_count + 1,
                  "queue_id": entry.id}
        if entry.reclaimed:
            self.metrics.reclaimed_leases.inc()
            log.warning("reclaimed an expired lease", extra={**fields,
                        "reclaims": entry.reclaim_count})
        if reclaim_limit_exceeded(entry.reclaim_count, self.config.max_reclaims):
            message = reclaim_failure_message(entry.reclaim_count)
            if await self._settle(
                    entry, lambda: self.store.fail(entry, entry.retry_count, message)):
                self._count("failed")
                log.error("failed: reclaim limit", extra={**fields, "error": message})
            else:
                self.counts.lost += 1
            return

        log.info("provisioning", extra=fields)

        def report(step: str, extra: dict[str, object]) -> None:
            log.info(step, extra={**fields, **extra})
            if echo is not None:
                echo(f"{step}: " + " ".join(f"{k}={v}" for k, v in extra.items()))

        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.lease_s * 0.75):
                result = await self.provisioner.provision(entry.user_id, report)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # every failure is decided by the policy, none escapes
            await self._failed(entry, error, fields)
            return
        # No register_secret(token) per entry: it recompiled one regex of every token ever
        # seen (O(n) per entry, unbounded memory); tokens are never logged, and the client
        # redacts them from its errors. (bench: issue 7)
        record = InstanceRecord(
            instance_name=result.instance_name,
            instance_id=result.instance_id,
            integration=result.integration,
            instance_token=result.instance_token,
        )
        self.outage.record_success()
        latency = await self._settle(entry, lambda: self._completions.complete(entry, record))
        if latency is None:
            self.counts.lost += 1
            log.warning("lease lost before completion; another replica owns the entry",
                        extra=fields)
            return
        self._count("completed")
        self.metrics.provisioning_latency.observe(latency)
        log.info(
            "completed",
            extra={**fields, "instance": result.instance_name, "adopted": result.adopted,
                   "duration_ms": round((time.monotonic() - started) * 1000, 1),
                   "latency_ms": round(latency * 1000, 1)},
        )

    async def _failed(self, entry: ClaimedEntry, error: Exception,
                      fields: dict[str, object]) -> None:
        kind = classify(error)
        message = _one_line(error)
        retry_after = getattr(error, "retry_after_s", None)
        now = time.monotonic()
        if kind is FailureKind.RATE_LIMITED:
            self.rate_pause.extend(now, rate_limit_pause_s(retry_after))
        elif kind in (FailureKind.AUTH, FailureKind.MISCONFIGURED, FailureKind.UNAVAILABLE) \
                and not self.outage.is_open:
            opened = self.outage.record_failure(kind, entry.id, now, message)
            if not opened and kind is FailureKind.UNAVAILABLE:
                healthy, reason = await self._probe_once()
                if not healthy:
                    self.outage.open(f"Evolution API unavailable: {reason}", time.monotonic())
            if self.outage.is_open:
                self._outage_opened()
        decision = decide(kind, retry_count=entry.retry_count, policy=self.config.retry,
                          outage_open=self.outage.is_open, message=message,
                          retry_after_s=retry_after)
        if decision.verdict is Verdict.RETRY:
            action: Callable[[], Awaitable[object]] = lambda: self.store.schedule_retry(  # noqa: E731
                entry, decision.retry_count, decision.delay_s, decision.message)
            outcome = "retried"
        elif decision.verdict is Verdict.FAIL:
            action = lambda: self.store.fail(entry, decision.retry_count, decision.message)  # noqa: E731
            outcome = "failed"
        else:
            action = lambda: self.store.release(entry, decision.delay_s, decision.message)  # noqa: E731
            outcome = "released"
        settled = await self._settle(entry, action)
        if not settled:
            self.counts.lost += 1
            log.warning("lease lost before settling a failure", extra=fields)
            return
        self._count(outcome)
        if outcome != "failed":
            self._wake.set()  # a new due time: the loop re-reads when to wake next
        level = logging.ERROR if outcome == "failed" else logging.WARNING
        log.log(level, outcome, extra={**fields, "error": message, "kind": str(kind),
                                       "retry_count": decision.retry_count,
                                       "retry_in_s": decision.delay_s})

    def _count(self, outcome: str) -> None:
        setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
        self.metrics.provisioned.labels(outcome=outcome).inc()

    async def _settle(self, entry: ClaimedEntry,
                      action: Callable[[], Awaitable[T]]) -> T | None:
        """Run one transition, riding out a short database blip; None when it never landed
        (the lease then expires and another claim redoes the idempotent work)."""
        for delay in (*DB_RETRY_DELAYS_S, None):
            try:
                result = await action()
                self._db_ok()
                return result
            except DB_ERRORS as error:
                if not _is_connectivity_error(error):
                    # The statement itself was refused (a data error): retrying it cannot help,
                    # and the database is not unreachable. The lease expires; a reclaim retries.
                    log.error("could not record the outcome; the lease will expire",
                              extra={"user_id": str(entry.user_id), "error": _one_line(error)})
                    return None
                self._db_failed(error)
                if delay is None:
                    log.error("could not record the outcome; the lease will expire",
                              extra={"user_id": str(entry.user_id), "error": _one_line(error)})
                    return None
                await asyncio.sleep(delay)
        return None

    # --- health of the database and the API --------------------------------------------------

    def _db_failed(self, error: BaseException) -> None:
        if self.db_error is None:
            log.error("database error", extra={"error": _one_line(error)})
        self.db_error = _one_line(error)

    def _db_ok(self) -> None:
        if self.db_error is not None:
            log.info("database reachable again")
        self.db_error = None

    async def _probe(self) -> tuple[bool, str]:
        """GET / (is it up?), then a keyed call (is our key accepted?)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.client.server_info()
                await self.client.check_key()
        except TimeoutError:
            return False, "probe timed out"
        except EvolutionError as error:
            return False, _one_line(error)
        return True, "ok"

    async def _probe_once(self) -> tuple[bool, str]:
        """One probe shared by every task that failed at the same moment."""
        now = time.monotonic()
        if self._last_probe and now - self._last_probe[0] < PROBE_RESULT_TTL_S:
            return self._last_probe[1], self._last_probe[2]
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._probe())
        healthy, reason = await asyncio.shield(self._probe_task)
        self._last_probe = (time.monotonic(), healthy, reason)
        return healthy, reason

    def _outage_opened(self) -> None:
        self.metrics.backoff_active.set(1)
        log.error("global back-off: claiming paused, retries not counted",
                  extra={"reason": self.outage.reason})
        if self._probe_loop is None or self._probe_loop.done():
            self._probe_loop = asyncio.create_task(self._probe_until_recovered())

    async def _probe_until_recovered(self) -> None:
        while self.outage.is_open:
            await asyncio.sleep(self.outage.next_probe_delay_s())
            try:
                healthy, reason = await self._probe()
            except Exception as error:  # keep probing: nothing else would close the back-off
                healthy, reason = False, _one_line(error)
            if healthy:
                down_for = time.monotonic() - (self.outage.opened_at or time.monotonic())
                self.outage.close()
                self._last_probe = None
                self.metrics.backoff_active.set(0)
                log.info("Evolution API back: resuming",
                         extra={"down_for_s": round(down_for, 1)})
                self._wake.set()
                return
            log.debug("probe failed", extra={"reason": reason})

    # --- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Stop claiming (done: the loop has exited), let in-flight work finish within the
        grace, release what did not finish back to pending with no retry spent."""
        if self._probe_loop is not None:
            self._probe_loop.cancel()
        if not self._inflight:
            self._cancel_probe()
            return
        log.info("draining in-flight work", extra={"in_flight": len(self._inflight),
                                                     "grace_s": self.config.shutdown_grace_s})
        tasks = list(self._inflight)
        entries = dict(self._inflight)
        _done, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # One attempt each, together, under one bound: the unit's TimeoutStopSec must not be
        # outlived; what is not released here waits for its lease to expire.
        results: list[bool | BaseException] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_RELEASE_BOUND_S):
                results = await asyncio.gather(
                    *(self.store.release(entries[task], 0.0, None) for task in pending),
                    return_exceptions=True,
                )
        for released in results:
            if released is True:
                self._count("released")
        if pending:
            log.info("released unfinished entries", extra={"released": len(pending)})
        self._cancel_probe()

    def _cancel_probe(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            self._probe_task.cancel()
