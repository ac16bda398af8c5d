"""The deletion queue's store: the shared lease transitions on its own table (with the race
rule in its claim), plus what only deletions do: read what to delete, and complete."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from listener.db import queries
from listener.db.store import ClaimedEntry, LeaseStore


@dataclass(frozen=True)
class DeletionTarget:
    """The recorded instance name (None: derived from the prefix) and its server (None:
    the single server)."""

    instance_name: str | None
    server: str | None


class DeletionStore(LeaseStore):
    def __init__(self, pool: AsyncConnectionPool, owner: str, lease_s: float) -> None:
        super().__init__(pool, owner, lease_s, queries.DELETION_QUEUE)

    async def target(self, entry: ClaimedEntry) -> DeletionTarget:
        rows = await self._fetchall(queries.DELETION_TARGET, {"id": entry.id})
        if not rows:
            return DeletionTarget(None, None)
        return DeletionTarget(rows[0]["instance_name"], rows[0]["server"])

    async def complete(self, entry: ClaimedEntry) -> float | None:
        """`completed`, and the user's instance and creation rows gone, in one statement;
        seconds since the deletion was queued, or None when the lease was lost."""
        rows = await self._fetchall(queries.COMPLETE_DELETION, self._cas(entry))
        return float(rows[0]["latency_s"]) if rows else None
