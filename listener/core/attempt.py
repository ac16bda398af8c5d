"""One attempt of one claimed entry, and its settlement.

The handler does the work; `policy` decides what a failure means (retry, fail, release);
the breaker of the entry's server hears about outages; the outcome is written fenced on
the claim, riding out a database blip. Any kind of job goes through here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from listener.core.breaker import Breakers
from listener.core.jobs import JobKind, LeaseLost
from listener.core.observer import WorkObserver
from listener.core.outcome import Counts, Outcome
from listener.core.settle import DB_ERRORS, DatabaseHealth, settle
from listener.db.store import ClaimedEntry
from listener.policy import (
    FailureKind,
    RetryPolicy,
    ServerWait,
    Verdict,
    classify,
    decide,
    reclaim_failure_message,
    reclaim_limit_exceeded,
)
from listener.text import one_line

log = logging.getLogger("listener.worker")

DB_ERROR_WAIT_S = 1.0  # placement could not be recorded: look again soon, no retry spent


@dataclass(frozen=True)
class AttemptConfig:
    lease_s: float
    max_reclaims: int
    retry: RetryPolicy


class AttemptRunner:
    """Runs attempts; tallies their outcomes in `counts`; `due_again(kind, entry, delay_s)` is
    called when a settle gave an entry a new due time (the loop re-reads when to wake
    next, and knows that kind has work due then even while every slot is taken)."""

    def __init__(self, config: AttemptConfig, breakers: Breakers, health: DatabaseHealth,
                 observer: WorkObserver,
                 due_again: Callable[[JobKind, ClaimedEntry, float], None]) -> None:
        self.config = config
        self.breakers = breakers
        self.health = health
        self.observer = observer
        self.counts = Counts()
        self._due_again = due_again

    def record(self, kind: JobKind, outcome: Outcome) -> None:
        self.counts.record(outcome)
        if outcome is not Outcome.LOST:
            self.observer.settled(kind.name, outcome)

    async def run(self, kind: JobKind, entry: ClaimedEntry,
                  echo: Callable[[str], None] | None = None) -> Outcome:
        fields: dict[str, object] = {"user_id": str(entry.user_id),
                                     "attempt": entry.retry_count + 1, "queue_id": entry.id}
        if entry.reclaimed:
            self.observer.reclaimed(kind.name)
            log.warning("reclaimed an expired lease",
                        extra={**fields, "reclaims": entry.reclaim_count})
        if reclaim_limit_exceeded(entry.reclaim_count, self.config.max_reclaims):
            return await self._abandon(kind, entry, fields)

        try:
            server = await kind.server_for(entry)  # before any HTTP: placement (SPEC §10)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            self.record(kind, Outcome.LOST)
            log.warning("lease lost before placement; another replica owns the entry",
                        extra=fields)
            return Outcome.LOST
        except DB_ERRORS as error:
            self.health.failed(error)
            return await self._failed(kind, entry, ServerWait(
                f"placement not recorded: {one_line(error)}", DB_ERROR_WAIT_S), fields, None)
        except Exception as error:  # a wait for room, a server no longer configured
            return await self._failed(kind, entry, error, fields, None)
        if entry.server != server:
            entry = replace(entry, server=server)
        fields["server"] = server
        # One INFO line per entry ("completed" or the failure's line) keeps the default log
        # level cheap under load; the start and each step are DEBUG, still carrying user_id
        # and attempt (SPEC 7). Their `extra` dicts are built only when DEBUG is on.
        steps_logged = log.isEnabledFor(logging.DEBUG)
        if steps_logged:
            log.debug(kind.action, extra=fields)

        def report(step: str, extra: dict[str, object]) -> None:
            if steps_logged:
                log.debug(step, extra={**fields, **extra})
            if echo is not None:
                echo(f"{step}: " + " ".join(f"{k}={v}" for k, v in extra.items()))

        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.lease_s * 0.75):
                result = await kind.handler.attempt(entry, report)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # every failure is decided by the policy, none escapes
            return await self._failed(kind, entry, error, fields, server)
        self.breakers.get(server).record_success()
        latency = await settle(lambda: kind.handler.complete(entry, result), self.health,
                               entry.user_id)
        if latency is None:
            self.record(kind, Outcome.LOST)
            log.warning("lease lost before completion; another replica owns the entry",
                        extra=fields)
            return Outcome.LOST
        self.record(kind, Outcome.COMPLETED)
        self.observer.completed_after(kind.name, latency)
        if log.isEnabledFor(logging.INFO):
            log.info("completed", extra={
                **fields, **kind.handler.describe(result),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "latency_ms": round(latency * 1000, 1)})
        return Outcome.COMPLETED

    async def _abandon(self, kind: JobKind, entry: ClaimedEntry,
                       fields: dict[str, object]) -> Outcome:
        message = reclaim_failure_message(entry.reclaim_count)
        failed = await settle(lambda: kind.store.fail(entry, entry.retry_count, message),
                              self.health, entry.user_id)
        if not failed:
            self.record(kind, Outcome.LOST)
            return Outcome.LOST
        self.record(kind, Outcome.FAILED)
        log.error("failed: reclaim limit", extra={**fields, "error": message})
        return Outcome.FAILED

    async def _failed(self, kind: JobKind, entry: ClaimedEntry, error: Exception,
                      fields: dict[str, object], server: str | None) -> Outcome:
        """`server` None: the attempt never reached a server (placement failed), so no
        breaker hears of it."""
        failure = classify(error)
        message = one_line(error)
        retry_after = getattr(error, "retry_after_s", None)
        outage_open = False
        if server is not None:
            breaker = self.breakers.get(server)
            await breaker.record_failure(failure, entry.id, message, retry_after)
            outage_open = breaker.is_open
        decision = decide(failure, retry_count=entry.retry_count, policy=self.config.retry,
                          outage_open=outage_open, message=message,
                          retry_after_s=retry_after)
        action: Callable[[], Awaitable[bool]]
        if decision.verdict is Verdict.RETRY:
            outcome = Outcome.RETRIED
            action = lambda: kind.store.schedule_retry(  # noqa: E731
                entry, decision.retry_count, decision.delay_s, decision.message)
        elif decision.verdict is Verdict.FAIL:
            outcome = Outcome.FAILED
            action = lambda: kind.store.fail(  # noqa: E731
                entry, decision.retry_count, decision.message)
        else:
            outcome = Outcome.RELEASED
            action = lambda: kind.store.release(  # noqa: E731
                entry, decision.delay_s, decision.message)
        if not await settle(action, self.health, entry.user_id):
            self.record(kind, Outcome.LOST)
            log.warning("lease lost before settling a failure", extra=fields)
            return Outcome.LOST
        self.record(kind, outcome)
        if outcome is not Outcome.FAILED:
            self._due_again(kind, entry, decision.delay_s)
        level = logging.ERROR if outcome is Outcome.FAILED else logging.WARNING
        if failure is FailureKind.NO_SERVER:
            level = logging.DEBUG  # the placer logs once when the fleet starts waiting
        log.log(level, str(outcome), extra={**fields, "error": message, "kind": str(failure),
                                            "retry_count": decision.retry_count,
                                            "retry_in_s": decision.delay_s})
        return outcome
