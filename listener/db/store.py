"""The queue's transitions, executed: thin typed wrappers over `queries`, one pool.

Every method is one statement in autocommit, so each transition is atomic by itself, and
every transition out of `processing` is a compare-and-set on the claim (see queries.py).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener.db import queries


@dataclass(frozen=True)
class ClaimedEntry:
    """A row this replica holds: `attempt` is the fencing token of this claim."""

    id: int
    user_id: uuid.UUID
    retry_count: int
    attempt: int
    reclaim_count: int
    reclaimed: bool
    created_at: datetime


@dataclass(frozen=True)
class InstanceRecord:
    instance_name: str
    instance_id: str | None
    integration: str
    instance_token: str | None


@dataclass(frozen=True)
class WorkDepth:
    pending: int
    processing: int
    failed: int
    oldest_pending_age_s: float


def _entry(row: tuple[Any, ...]) -> ClaimedEntry:
    return ClaimedEntry(
        id=row[0],
        user_id=row[1],
        retry_count=row[2],
        attempt=row[3],
        reclaim_count=row[4],
        reclaimed=row[5] == "processing",
        created_at=row[6],
    )


class QueueStore:
    """The service's view of the queue table, bound to one owner identity."""

    def __init__(self, pool: AsyncConnectionPool, owner: str, lease_s: float) -> None:
        self.pool = pool
        self.owner = owner
        self.lease_s = lease_s

    def _cas(self, entry: ClaimedEntry) -> dict[str, Any]:
        return {"id": entry.id, "owner": self.owner, "attempt": entry.attempt}

    async def _fetchall(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(sql.encode(), params)
            return await cursor.fetchall() if cursor.description else []

    async def claim(self, limit: int) -> tuple[list[ClaimedEntry], float | None]:
        """Claim up to `limit` due entries; also seconds until the next unclaimed row is
        due (None when the queue holds no work at all)."""
        rows = await self._fetchall(
            queries.CLAIM_DUE,
            {"limit": max(0, limit), "owner": self.owner, "lease_s": self.lease_s},
        )
        entries = [_entry(row) for row in rows if row[0] is not None]
        next_due = rows[0][7] if rows else None
        return entries, None if next_due is None else float(next_due)

    async def claim_user(self, user_id: uuid.UUID) -> ClaimedEntry | None:
        rows = await self._fetchall(
            queries.CLAIM_USER,
            {"user_id": user_id, "owner": self.owner, "lease_s": self.lease_s},
        )
        return _entry(rows[0]) if rows else None

    async def enqueue(self, user_id: uuid.UUID) -> None:
        await self._fetchall(queries.ENQUEUE_USER, {"user_id": user_id})

    async def complete_many(
        self, done: list[tuple[ClaimedEntry, InstanceRecord]], webhook_url: str,
        webhook_events: list[str],
    ) -> dict[tuple[int, int], float]:
        """Record the instances and mark the entries completed, together, in one statement.
        Returns {(entry id, attempt): seconds since its insert} for the claims whose lease
        still held; a claim missing from it lost its lease and nothing of it was written."""
        if not done:
            return {}
        rows = await self._fetchall(
            queries.COMPLETE_MANY,
            {
                "owner": self.owner,
                "ids": [e.id for e, _ in done],
                "attempts": [e.attempt for e, _ in done],
                "instance_names": [r.instance_name for _, r in done],
                "instance_ids": [r.instance_id for _, r in done],
                "integrations": [r.integration for _, r in done],
                "tokens": [r.instance_token for _, r in done],
                "webhook_url": webhook_url,
                "webhook_events": webhook_events,
            },
        )
        return {(int(row[0]), int(row[1])): float(row[2]) for row in rows}

    async def schedule_retry(
        self, entry: ClaimedEntry, retry_count: int, delay_s: float, error: str
    ) -> bool:
        rows = await self._fetchall(
            queries.SCHEDULE_RETRY,
            {**self._cas(entry), "retry_count": retry_count, "delay_s": delay_s, "error": error},
        )
        return bool(rows)

    async def fail(self, entry: ClaimedEntry, retry_count: int, error: str) -> bool:
        rows = await self._fetchall(
            queries.FAIL, {**self._cas(entry), "retry_count": retry_count, "error": error}
        )
        return bool(rows)

    async def release(self, entry: ClaimedEntry, delay_s: float, error: str | None) -> bool:
        rows = await self._fetchall(
            queries.RELEASE, {**self._cas(entry), "delay_s": delay_s, "error": error}
        )
        return bool(rows)

    async def work_depth(self) -> WorkDepth:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(queries.WORK_DEPTH)
            depth = await cursor.fetchone()
            cursor = await conn.execute(queries.FAILED_COUNT)
            failed = await cursor.fetchone()
        assert depth is not None and failed is not None
        return WorkDepth(
            pending=int(depth[0]),
            processing=int(depth[1]),
            failed=int(failed[0]),
            oldest_pending_age_s=float(depth[2]),
        )

    async def ping(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(queries.PROBE)


class CompletionBatcher:
    """Completes entries in batches: under load, everything that finished while the last
    batch was being written goes out in the next statement; at low load a batch is one entry
    and waits for nothing (one scheduler turn)."""

    def __init__(self, store: QueueStore, webhook_url: str, webhook_events: list[str],
                 max_batch: int = 64) -> None:
        self.store = store
        self.webhook_url = webhook_url
        self.webhook_events = webhook_events
        self.max_batch = max_batch
        self._waiting: list[tuple[ClaimedEntry, InstanceRecord, asyncio.Future[float | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def complete(self, entry: ClaimedEntry, record: InstanceRecord) -> float | None:
        """Seconds since the entry's insert, or None when its lease was lost."""
        future: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, record, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # let entries finishing in this same turn join the batch
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            await self._write(batch)

    async def _write(
        self, batch: list[tuple[ClaimedEntry, InstanceRecord, asyncio.Future[float | None]]]
    ) -> None:
        try:
            latencies = await self.store.complete_many(
                [(entry, record) for entry, record, _ in batch],
                self.webhook_url, self.webhook_events,
            )
        except BaseException as error:
            if len(batch) > 1 and isinstance(error, psycopg.Error) \
                    and not isinstance(error, psycopg.OperationalError):
                # One row's data error must not fail its neighbours: write them one by one.
                for item in batch:
                    await self._write([item])
                return
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for entry, _, future in batch:
            if not future.done():
                future.set_result(latencies.get((entry.id, entry.attempt)))
