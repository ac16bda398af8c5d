"""The queue's transitions, executed: thin typed wrappers over `queries`, one pool.

Every method is one statement in autocommit, so each transition is atomic by itself, and
every transition out of `processing` is a compare-and-set on the claim (see queries.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    webhook_url: str
    webhook_events: list[str]
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

    async def claim(self, limit: int) -> list[ClaimedEntry]:
        if limit <= 0:
            return []
        rows = await self._fetchall(
            queries.CLAIM_DUE, {"limit": limit, "owner": self.owner, "lease_s": self.lease_s}
        )
        return [_entry(row) for row in rows]

    async def claim_user(self, user_id: uuid.UUID) -> ClaimedEntry | None:
        rows = await self._fetchall(
            queries.CLAIM_USER,
            {"user_id": user_id, "owner": self.owner, "lease_s": self.lease_s},
        )
        return _entry(rows[0]) if rows else None

    async def enqueue(self, user_id: uuid.UUID) -> None:
        await self._fetchall(queries.ENQUEUE_USER, {"user_id": user_id})

    async def seconds_until_next_due(self) -> float | None:
        rows = await self._fetchall(queries.SECONDS_UNTIL_NEXT_DUE, {})
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    async def complete(self, entry: ClaimedEntry, record: InstanceRecord) -> float | None:
        """Record the instance and mark the entry completed, together; the latency from the
        entry's insert in seconds, or None when the lease was lost (nothing written)."""
        rows = await self._fetchall(
            queries.COMPLETE,
            {
                **self._cas(entry),
                "instance_name": record.instance_name,
                "instance_id": record.instance_id,
                "integration": record.integration,
                "webhook_url": record.webhook_url,
                "webhook_events": record.webhook_events,
                "instance_token": record.instance_token,
            },
        )
        if not rows:
            return None
        return float(rows[0][0]) if rows[0][0] is not None else 0.0

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
