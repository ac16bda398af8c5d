"""Reconcile inside the service (SPEC §9): every LISTENER_RECONCILE_INTERVAL_S, one replica at
a time, with --apply semantics but never deleting orphan instances.

One replica at a time: a session advisory lock taken with pg_try_advisory_lock on a
connection of its own (not the pool's: a session lock must stay on the session that took
it, and a pooled connection goes back to others). Whoever does not get it skips this round.
The first round runs one interval after start, not at start: a fleet restarting together
must not reconcile all at once, and the service's first job is the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Protocol

import psycopg
from psycopg.rows import dict_row

from listener.db import queries
from listener.lifecycle.reconcile.model import zero_counts
from listener.lifecycle.reconcile.run import Reconciler, ReconcileReport

log = logging.getLogger("listener.reconcile")


class ReconcileObserver(Protocol):
    """What the scheduler reports; ops' metrics implement it (lifecycle never imports ops)."""

    def set_drift(self, counts: Mapping[str, int]) -> None: ...

    def reconciled(self, finished_at: float) -> None: ...

    def vanished_again(self) -> None: ...


class ReconcileScheduler:
    def __init__(
        self,
        dsn: str,
        reconciler: Reconciler,
        metrics: ReconcileObserver,
        interval_s: float,
        *,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.reconciler = reconciler
        self.metrics = metrics
        self.interval_s = interval_s
        self.connect_timeout_s = connect_timeout_s
        self.runs = 0
        reconciler.on_vanished_again = self._vanished_again
        metrics.set_drift(zero_counts())

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def _vanished_again(self, user_id: uuid.UUID, name: str, times: int) -> None:
        self.metrics.vanished_again()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: wait an interval, reconcile if this replica gets the lock."""
        if not self.enabled:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            if stop.is_set():
                return
            try:
                await self.run_once()
            except Exception as error:  # one bad round must not end the service's loop
                log.error("reconcile failed", extra={"error": " ".join(str(error).split())[:300]})

    async def run_once(self) -> ReconcileReport | None:
        """One round under the lock; None when another replica holds it."""
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=int(self.connect_timeout_s),
            application_name="evolution-listener-reconcile")
        try:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(queries.RECONCILE_TRY_LOCK, {"key": queries.RECONCILE_LOCK_KEY})
            row = await cur.fetchone()
            if not row or not row["locked"]:
                log.debug("reconcile skipped: another replica holds the lock")
                return None
            try:
                report = await self.reconciler.run(apply=True, delete_orphans=False)
            finally:
                await cur.execute(queries.RECONCILE_UNLOCK, {"key": queries.RECONCILE_LOCK_KEY})
        finally:
            await conn.close()
        self.runs += 1
        self.metrics.set_drift(report.counts)
        self.metrics.reconciled(time.time())
        log.info("reconciled", extra={**report.counts, "failed": report.failed,
                                      "instances": report.instances_seen})
        return report
