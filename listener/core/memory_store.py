"""An in-memory `JobStore`: the loop's branches tested in milliseconds, without PostgreSQL.

It keeps the PostgreSQL store's rules (held to them by tests/integration/test_store_conformance):
oldest due first, a processing row whose lease expired is due again (reclaimed), a locked
row is skipped but still counts as due, every transition out of processing is fenced on
(id, owner, claim_seq). Time is a callable, so tests can move it.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from listener.db.store import ClaimedEntry


@dataclass
class MemoryRow:
    id: int
    user_id: uuid.UUID
    status: str = "pending"
    retry_count: int = 0
    claim_seq: int = 0
    reclaim_count: int = 0
    next_attempt_at: float = 0.0
    lease_owner: str | None = None
    error_message: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    server: str | None = None


class MemoryStore:
    """One job table in memory, bound to one owner identity (share `rows` between two
    stores to play two replicas)."""

    def __init__(self, owner: str = "memory", lease_s: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 rows: dict[int, MemoryRow] | None = None) -> None:
        self.owner = owner
        self.lease_s = lease_s
        self.clock = clock
        self.rows: dict[int, MemoryRow] = rows if rows is not None else {}
        self.locked: set[int] = set()  # held by someone else's open transaction
        self.live_owners: set[str] = set()  # owners holding a liveness lock (share it)
        self.claims = 0  # statements run, for tests of how often the loop asks
        self._ids = itertools.count(max(self.rows, default=0) + 1)

    def add(self, user_id: uuid.UUID | None = None, due_in_s: float = 0.0) -> MemoryRow:
        row = MemoryRow(id=next(self._ids), user_id=user_id or uuid.uuid4(),
                        next_attempt_at=self.clock() + due_in_s)
        self.rows[row.id] = row
        return row

    async def claim(self, limit: int, paused: Collection[str] = ()
                    ) -> tuple[list[ClaimedEntry], float | None]:
        self.claims += 1
        now = self.clock()
        live = [r for r in self.rows.values() if r.status in ("pending", "processing")
                and (r.server is None or r.server not in paused)]
        due = sorted((r for r in live if r.next_attempt_at <= now and r.id not in self.locked),
                     key=lambda r: (r.next_attempt_at, r.id))[: max(0, limit)]
        entries = []
        for row in due:
            reclaimed = row.status == "processing"
            row.status = "processing"
            row.claim_seq += 1
            row.reclaim_count += 1 if reclaimed else 0
            row.lease_owner = self.owner
            row.next_attempt_at = now + self.lease_s
            entries.append(ClaimedEntry(id=row.id, user_id=row.user_id,
                                        retry_count=row.retry_count, claim_seq=row.claim_seq,
                                        reclaim_count=row.reclaim_count, reclaimed=reclaimed,
                                        created_at=row.created_at, server=row.server))
        claimed = {row.id for row in due}
        upcoming = [r.next_attempt_at for r in live if r.id not in claimed]
        return entries, (min(upcoming) - now) if upcoming else None

    async def rescue_dead(self) -> int:
        now = self.clock()
        dead = [r for r in self.rows.values()
                if r.status == "processing" and r.next_attempt_at > now
                and r.id not in self.locked and r.lease_owner is not None
                and r.lease_owner != self.owner and r.lease_owner not in self.live_owners]
        for row in dead:
            row.next_attempt_at = now  # PostgreSQL: its insert time (no clock for it here)
        return len(dead)

    def _held(self, entry: ClaimedEntry) -> MemoryRow | None:
        row = self.rows.get(entry.id)
        if row is None or row.status != "processing" or row.lease_owner != self.owner \
                or row.claim_seq != entry.claim_seq:
            return None
        return row

    def _pending(self, row: MemoryRow, delay_s: float) -> None:
        row.status = "pending"
        row.next_attempt_at = self.clock() + delay_s
        row.lease_owner = None

    async def schedule_retry(self, entry: ClaimedEntry, retry_count: int, delay_s: float,
                             error: str) -> bool:
        row = self._held(entry)
        if row is None:
            return False
        self._pending(row, delay_s)
        row.retry_count = retry_count
        row.error_message = error
        return True

    async def fail(self, entry: ClaimedEntry, retry_count: int, error: str) -> bool:
        row = self._held(entry)
        if row is None:
            return False
        row.status = "failed"
        row.retry_count = retry_count
        row.error_message = error
        row.lease_owner = None
        return True

    async def release(self, entry: ClaimedEntry, delay_s: float, error: str | None) -> bool:
        row = self._held(entry)
        if row is None:
            return False
        self._pending(row, delay_s)
        if error is not None:
            row.error_message = error
        return True

    async def complete(self, entry: ClaimedEntry) -> bool:
        """A kind's completion, fenced like the others (the fake handlers use it)."""
        row = self._held(entry)
        if row is None:
            return False
        row.status = "completed"
        row.error_message = None
        row.lease_owner = None
        return True
