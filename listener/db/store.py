"""The queue's transitions, executed: thin typed wrappers over `queries`, one pool.

Every method is one statement in autocommit, so each transition is atomic by itself, and
every transition out of `processing` is a compare-and-set on the claim (see queries.py).
`LeaseStore` is the part every kind of job shares (claim, retry, fail, release), bound to
one `JobTable`; `CreationStore` adds what only creations do. Rows are read by column name.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.db import queries
from listener.db.queries import CREATION_QUEUE, JobTable


@dataclass(frozen=True)
class ClaimedEntry:
    """A row this replica holds: `claim_seq` (the `attempts` column) is the fencing token
    of this claim; "attempt" in logs means retry_count + 1."""

    id: int
    user_id: uuid.UUID
    retry_count: int
    claim_seq: int
    reclaim_count: int
    reclaimed: bool
    created_at: datetime
    server: str | None = None  # the Evolution server it is placed on (None: not yet)


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


@dataclass(frozen=True)
class QueueRow:
    """One creation-queue row as the operator commands show it."""

    id: int
    user_id: uuid.UUID
    status: str
    retry_count: int
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None
    next_attempt_at: datetime
    lease_owner: str | None
    attempts: int
    reclaim_count: int


def _entry(row: dict[str, Any]) -> ClaimedEntry:
    return ClaimedEntry(
        id=row["id"],
        user_id=row["user_id"],
        retry_count=row["retry_count"],
        claim_seq=row["claim_seq"],
        reclaim_count=row["reclaim_count"],
        reclaimed=row["previous_status"] == "processing",
        created_at=row["created_at"],
        server=row.get("server"),
    )


@dataclass(frozen=True)
class CompletedAndClaimed:
    """A batch completion that also claimed: {(entry id, claim_seq): seconds since insert}
    for the completions whose lease held, the entries claimed, and seconds until the next
    row not claimed here is due (None: no work at all)."""

    latencies: dict[tuple[int, int], float]
    claimed: list[ClaimedEntry]
    next_due_s: float | None


@dataclass(frozen=True)
class ServerUsage:
    """One server's instances recorded and placements in flight (SPEC §10)."""

    instances: int
    in_flight: int

    @property
    def used(self) -> int:
        return self.instances + self.in_flight


class LeaseStore:
    """One job table's claim and settle transitions, bound to one owner identity."""

    def __init__(self, pool: AsyncConnectionPool, owner: str, lease_s: float,
                 table: JobTable = CREATION_QUEUE) -> None:
        self.pool = pool
        self.owner = owner
        self.lease_s = lease_s
        self.table = table

    def _cas(self, entry: ClaimedEntry) -> dict[str, Any]:
        return {"id": entry.id, "owner": self.owner, "claim_seq": entry.claim_seq}

    async def _fetchall(self, sql: str, params: dict[str, Any] | None = None
                        ) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(sql.encode(), params)
            return await cursor.fetchall() if cursor.description else []

    async def claim(self, limit: int, paused: Collection[str] = ()
                    ) -> tuple[list[ClaimedEntry], float | None]:
        """Claim up to `limit` due entries, none placed on a `paused` server; also seconds
        until the next unclaimed row is due (None when the queue holds no work at all)."""
        rows = await self._fetchall(
            self.table.claim_due,
            {"limit": max(0, limit), "owner": self.owner, "lease_s": self.lease_s,
             "paused": sorted(paused)},
        )
        entries = [_entry(row) for row in rows if row["id"] is not None]
        next_due = rows[0]["next_due_s"] if rows else None
        return entries, None if next_due is None else float(next_due)

    async def _complete_and_claim(self, sql: str, params: dict[str, Any], limit: int,
                                  paused: Collection[str]) -> CompletedAndClaimed:
        """Run a kind's `JobTable.complete_then_claim` statement and split its answer."""
        rows = await self._fetchall(
            sql, {**params, "owner": self.owner, "limit": max(0, limit),
                  "lease_s": self.lease_s, "paused": sorted(paused)})
        latencies: dict[tuple[int, int], float] = {}
        entries: list[ClaimedEntry] = []
        next_due: float | None = None
        for row in rows:
            if row["part"] == "completed":
                latencies[(int(row["id"]), int(row["claim_seq"]))] = float(row["latency_s"])
                continue
            if row["next_due_s"] is not None:
                next_due = float(row["next_due_s"])
            if row["id"] is not None:
                entries.append(_entry(row))
        return CompletedAndClaimed(latencies, entries, next_due)

    async def claim_user(self, user_id: uuid.UUID) -> ClaimedEntry | None:
        rows = await self._fetchall(
            self.table.claim_user,
            {"user_id": user_id, "owner": self.owner, "lease_s": self.lease_s},
        )
        return _entry(rows[0]) if rows else None

    async def schedule_retry(
        self, entry: ClaimedEntry, retry_count: int, delay_s: float, error: str
    ) -> bool:
        rows = await self._fetchall(
            self.table.schedule_retry,
            {**self._cas(entry), "retry_count": retry_count, "delay_s": delay_s, "error": error},
        )
        return bool(rows)

    async def fail(self, entry: ClaimedEntry, retry_count: int, error: str) -> bool:
        rows = await self._fetchall(
            self.table.fail, {**self._cas(entry), "retry_count": retry_count, "error": error}
        )
        return bool(rows)

    async def release(self, entry: ClaimedEntry, delay_s: float, error: str | None) -> bool:
        rows = await self._fetchall(
            self.table.release, {**self._cas(entry), "delay_s": delay_s, "error": error}
        )
        return bool(rows)

    async def rescue_dead(self) -> int:
        """Make due now the rows of owners that hold no liveness lock (see
        `JobTable.rescue_dead`); how many."""
        return len(await self._fetchall(self.table.rescue_dead, {"owner": self.owner}))

    async def work_depth(self) -> WorkDepth:
        [depth] = await self._fetchall(self.table.work_depth)
        [failed] = await self._fetchall(self.table.failed_count)
        return WorkDepth(
            pending=int(depth["pending"]),
            processing=int(depth["processing"]),
            failed=int(failed["failed"]),
            oldest_pending_age_s=float(depth["oldest_pending_age_s"]),
        )

    async def ping(self) -> None:
        await self._fetchall(queries.PROBE)


class CreationStore(LeaseStore):
    """The creation queue: the shared transitions plus its completion (the instance row
    and `completed` in one statement) and the `provision` command's look-ups."""

    def __init__(self, pool: AsyncConnectionPool, owner: str, lease_s: float) -> None:
        super().__init__(pool, owner, lease_s, CREATION_QUEUE)

    async def enqueue(self, user_id: uuid.UUID) -> None:
        await self._fetchall(queries.ENQUEUE_USER, {"user_id": user_id})

    async def server_usage(self) -> dict[str, ServerUsage]:
        """Per server: instances recorded there and placements in flight."""
        rows = await self._fetchall(queries.SERVER_USAGE)
        return {str(row["server"]): ServerUsage(int(row["instances"]), int(row["in_flight"]))
                for row in rows if row["server"] is not None}

    async def place(self, entry: ClaimedEntry, server: str, capacity: int | None
                    ) -> tuple[bool, str | None]:
        """Record `server` on the claimed entry unless it has one (fenced on the claim, and
        only while the server has room). (False, None): the lease is lost; (True, name):
        the entry's server (this one, or an earlier choice to keep); (True, None): the
        server filled meanwhile."""
        params = {**self._cas(entry), "server": server, "capacity": capacity}
        async with self.pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            if capacity is not None:
                await cursor.execute(queries.PLACE_LOCK.encode(), params)
            await cursor.execute(queries.PLACE.encode(), params)
            rows = await cursor.fetchall()
        if not rows:
            return False, None
        placed = rows[0]["server"]
        return True, None if placed is None else str(placed)

    async def queue_row(self, user_id: uuid.UUID) -> QueueRow | None:
        rows = await self._fetchall(queries.QUEUE_ROW_BY_USER, {"user_id": user_id})
        return QueueRow(**rows[0]) if rows else None

    async def complete_many(
        self, done: list[tuple[ClaimedEntry, InstanceRecord]], webhook_url: str,
        webhook_events: list[str],
    ) -> dict[tuple[int, int], float]:
        """Record the instances and mark the entries completed, together, in one statement.
        Returns {(entry id, claim_seq): seconds since its insert} for the claims whose lease
        still held; a claim missing from it lost its lease and nothing of it was written."""
        if not done:
            return {}
        rows = await self._fetchall(
            queries.COMPLETE_MANY,
            {"owner": self.owner, **_completion_params(done, webhook_url, webhook_events)},
        )
        return {(int(row["id"]), int(row["claim_seq"])): float(row["latency_s"])
                for row in rows}

    async def complete_many_and_claim(
        self, done: list[tuple[ClaimedEntry, InstanceRecord]], webhook_url: str,
        webhook_events: list[str], limit: int, paused: Collection[str] = (),
    ) -> CompletedAndClaimed:
        """`complete_many`, and in the same statement a claim of up to `limit` due entries
        as `claim` makes it (none placed on a `paused` server)."""
        return await self._complete_and_claim(
            queries.COMPLETE_MANY_AND_CLAIM,
            _completion_params(done, webhook_url, webhook_events), limit, paused)


def _completion_params(done: list[tuple[ClaimedEntry, InstanceRecord]], webhook_url: str,
                       webhook_events: list[str]) -> dict[str, Any]:
    return {
        "ids": [e.id for e, _ in done],
        "claim_seqs": [e.claim_seq for e, _ in done],
        "instance_names": [r.instance_name for _, r in done],
        "instance_ids": [r.instance_id for _, r in done],
        "integrations": [r.integration for _, r in done],
        "tokens": [r.instance_token for _, r in done],
        "webhook_url": webhook_url,
        "webhook_events": webhook_events,
    }

