"""The store as the loop and the attempt see it: claim, then one fenced transition.

A Protocol, so the PostgreSQL store (`listener.db.store.LeaseStore`, one per job table) and
the in-memory one (`listener.core.memory_store`) are interchangeable; a conformance test
holds both to the same behaviour.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from listener.db.store import ClaimedEntry


class JobStore(Protocol):
    async def claim(self, limit: int, paused: Collection[str] = ()
                    ) -> tuple[list[ClaimedEntry], float | None]:
        """Up to `limit` due entries, claimed for this owner, none placed on a `paused`
        Evolution server; and seconds until the next row not claimed here (nor paused) is
        due (None: no work at all; <= 0: due but locked)."""
        ...

    async def schedule_retry(
        self, entry: ClaimedEntry, retry_count: int, delay_s: float, error: str
    ) -> bool:
        """Pending again after `delay_s` with `retry_count`; False when the claim is stale."""
        ...

    async def fail(self, entry: ClaimedEntry, retry_count: int, error: str) -> bool: ...

    async def release(self, entry: ClaimedEntry, delay_s: float, error: str | None) -> bool:
        """Pending again after `delay_s`, no retry spent; False when the claim is stale."""
        ...

    async def rescue_dead(self) -> int:
        """Make due now the `processing` rows of other owners that are no longer alive
        (their liveness lock is gone), keeping their claim so the next claim counts a
        reclaim and fences the old one; how many rows."""
        ...
