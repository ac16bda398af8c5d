"""Operator actions on the queue: the seed's monitoring, manual retry and cleanup, as code.

Shared by the command line and the service (scheduled cleanup); each takes a pool so it runs
the same under both.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.db import queries
from listener.fleet.servers import ServerSpec

CLEANUP_BATCH = 1000
CLEANUP_MAX_BATCHES = 100_000


@dataclass(frozen=True)
class StatusFigures:
    status: str
    count: int
    avg_retries: float


@dataclass(frozen=True)
class Failure:
    user_id: str
    retry_count: int
    error_message: str | None
    processed_at: datetime | None


@dataclass(frozen=True)
class ServerFigures:
    """One Evolution server in `stats` (SPEC §10): its configuration and what it holds."""

    name: str
    state: str  # active, draining, or "not configured" (instances recorded, not in the file)
    capacity: int | None
    instances: int
    in_flight: int

    @property
    def free(self) -> int | None:
        if self.capacity is None:
            return None
        return max(0, self.capacity - self.instances - self.in_flight)

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "capacity": self.capacity, "instances": self.instances,
                "in_flight": self.in_flight, "free": self.free}


def server_figures(usage: Mapping[str, tuple[int, int]],
                   servers: Sequence[ServerSpec]) -> list[ServerFigures]:
    """The configured servers in the file's order, then any server that holds instances
    but is no longer configured (the operator must see those)."""
    figures = [ServerFigures(s.name, str(s.state), s.capacity, *usage.get(s.name, (0, 0)))
               for s in servers]
    listed = {s.name for s in servers}
    figures += [ServerFigures(name, "not configured", None, *counts)
                for name, counts in sorted(usage.items()) if name not in listed]
    return figures


@dataclass
class QueueStats:
    by_status: list[StatusFigures] = field(default_factory=list)
    oldest_pending_age_s: float | None = None
    recent_failures: list[Failure] = field(default_factory=list)
    # SPEC §9: deletions are counted apart; the creation figures keep the seed's meaning.
    deletions: list[StatusFigures] = field(default_factory=list)
    servers: list[ServerFigures] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "by_status": {
                s.status: {"count": s.count, "avg_retries": round(s.avg_retries, 3)}
                for s in self.by_status
            },
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "recent_failures": [
                {
                    "user_id": f.user_id,
                    "retry_count": f.retry_count,
                    "error_message": f.error_message,
                    "processed_at": f.processed_at.isoformat() if f.processed_at else None,
                }
                for f in self.recent_failures
            ],
            "deletions": {
                s.status: {"count": s.count, "avg_retries": round(s.avg_retries, 3)}
                for s in self.deletions
            },
            "servers": {s.name: s.as_json() for s in self.servers},
        }


async def stats(pool: AsyncConnectionPool, recent: int = 10,
                servers: Sequence[ServerSpec] = ()) -> QueueStats:
    result = QueueStats()
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(queries.STATS_BY_STATUS)
        result.by_status = [
            StatusFigures(str(r["status"]), int(r["count"]), float(r["avg_retries"] or 0.0))
            for r in await cursor.fetchall()
        ]
        await cursor.execute(queries.OLDEST_PENDING_AGE_S)
        row = await cursor.fetchone()
        age = None if row is None else row["age_s"]
        result.oldest_pending_age_s = None if age is None else float(age)
        await cursor.execute(queries.RECENT_FAILURES, {"limit": recent})
        result.recent_failures = [
            Failure(str(r["user_id"]), int(r["retry_count"]), r["error_message"],
                    r["processed_at"])
            for r in await cursor.fetchall()
        ]
        named = conn.cursor(row_factory=dict_row)
        await named.execute(queries.DELETION_STATS_BY_STATUS)
        result.deletions = [
            StatusFigures(str(r["status"]), int(r["count"]), float(r["avg_retries"] or 0.0))
            for r in await named.fetchall()
        ]
        await named.execute(queries.SERVER_USAGE)
        usage = {str(r["server"]): (int(r["instances"]), int(r["in_flight"]))
                 for r in await named.fetchall() if r["server"] is not None}
    result.servers = server_figures(usage, servers)
    return result


async def retry_user(pool: AsyncConnectionPool, user_id: uuid.UUID) -> str | None:
    """Reset a failed or completed user to pending (the trigger notifies); the previous
    status, or None when the user has no entry that can be retried."""
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(queries.QUEUE_ROW_BY_USER, {"user_id": user_id})
        row = await cursor.fetchone()
        if row is None:
            return None
        previous = str(row["status"])
        await cursor.execute(queries.RETRY_USER, {"user_id": user_id})
        updated = await cursor.fetchall()
    return previous if updated else None


async def retry_all_failed(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(queries.RETRY_ALL_FAILED)
        return len(await cursor.fetchall())


async def cleanup(pool: AsyncConnectionPool, older_than_days: int,
                  batch: int = CLEANUP_BATCH) -> int:
    """Delete completed entries older than the cutoff, creations and deletions alike,
    `batch` rows per short transaction, so no long lock is held on either queue."""
    total = 0
    for statement in (queries.CLEANUP_BATCH, queries.CLEANUP_DELETIONS_BATCH):
        for _ in range(CLEANUP_MAX_BATCHES):
            async with pool.connection() as conn:
                cursor = await conn.execute(statement, {"days": older_than_days, "batch": batch})
                deleted = cursor.rowcount
            total += max(0, deleted)
            if deleted < batch:
                break
    return total
