"""Entries claimed ahead of free slots (by a claim riding on a completion batch), waiting
for a slot in this replica.

Each is a lease held without work in progress, so it may wait only briefly: past
`max_wait_s`, or on a server that is now paused, it is given back (released, no retry
spent) rather than started late. A row
started long after its claim could outlive its lease mid-call, and the lease is what keeps
a second replica from calling the Evolution API for the same user (SPEC §4).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from listener.core.jobs import JobKind
from listener.db.store import ClaimedEntry

# A waiting entry is given back after this long, or a tenth of the lease if shorter: an
# attempt then starts with at least 90 % of its lease left (its timeout is 75 % of it).
MAX_WAIT_S = 1.0
MAX_WAIT_LEASE_SHARE = 0.1

Held = tuple[JobKind, ClaimedEntry]


def max_wait_s(lease_s: float) -> float:
    return min(MAX_WAIT_S, lease_s * MAX_WAIT_LEASE_SHARE)


@dataclass(frozen=True)
class Taken:
    """What `ClaimedAhead.take` hands out: entries to start now, entries to give back."""

    start: list[Held]
    give_back: list[Held]


class ClaimedAhead:
    """A FIFO of claimed entries with the time each was claimed; deciding which start and
    which go back is pure (the caller starts and releases)."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._entries: deque[tuple[JobKind, ClaimedEntry, float]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, kind: JobKind, entries: Collection[ClaimedEntry], now: float) -> None:
        self._entries.extend((kind, entry, now) for entry in entries)

    def take(self, now: float, free: int, paused: Collection[str]) -> Taken:
        """Up to `free` entries to start, oldest first; every stale entry and every entry
        on a `paused` server goes back. Entries beyond `free` that may still wait stay."""
        start: list[Held] = []
        give_back: list[Held] = []
        kept: deque[tuple[JobKind, ClaimedEntry, float]] = deque()
        for kind, entry, claimed_at in self._entries:
            if now - claimed_at >= self.max_wait_s \
                    or (entry.server is not None and entry.server in paused):
                give_back.append((kind, entry))
            elif len(start) < free:
                start.append((kind, entry))
            else:
                kept.append((kind, entry, claimed_at))
        self._entries = kept
        return Taken(start, give_back)

    def next_expiry(self) -> float | None:
        """When the oldest entry reaches its bound (None: empty)."""
        return self._entries[0][2] + self.max_wait_s if self._entries else None

    def take_all(self) -> list[Held]:
        """Every entry, to give back (stopping, liveness lost, every server backing off)."""
        entries = [(kind, entry) for kind, entry, _ in self._entries]
        self._entries.clear()
        return entries
