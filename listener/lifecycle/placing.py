"""Placing a new creation entry on an Evolution server (SPEC §10): the I/O around the pure
`fleet.placement`.

The choice is written to the queue row (fenced on the claim, and only while the server has
room) BEFORE the first create call, so a retry, a reclaim, a manual `provision` or another
replica goes to the same server, and a lost create response can never yield a second
instance on another one. An entry that already has a server keeps it.

Usage counts come from one `SERVER_USAGE` read shared by every entry placed within
`memo_s`, plus this replica's own placements since that read; the `PLACE` statement checks
the capacity again under a per-server lock, so a stale count can only make an entry look
again, never overfill a server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from listener.core.jobs import LeaseLost
from listener.db.store import ClaimedEntry, ServerUsage
from listener.fleet.placement import Placed, Wait, WaitReason, loads, place
from listener.fleet.servers import ServerSpec
from listener.fleet.status import WaitChange, WaitWatch
from listener.policy import ServerWait, UnknownServerError

log = logging.getLogger("listener.worker")

USAGE_MEMO_S = 0.1


class PlacementStore(Protocol):
    """The two statements placement needs (db/store.py CreationStore)."""

    async def server_usage(self) -> dict[str, ServerUsage]: ...

    async def place(self, entry: ClaimedEntry, server: str, capacity: int | None
                    ) -> tuple[bool, str | None]: ...


class PlacementObserver(Protocol):
    """What placement reports (ops/metrics.py implements it; lifecycle never imports ops)."""

    def placed(self, server: str) -> None: ...

    def placement_wait(self, reason: str, servers_full: bool) -> None:
        """An entry could not be placed; `servers_full`: every active server is full."""

    def placement_resumed(self) -> None: ...


class NullPlacementObserver:
    def placed(self, server: str) -> None:
        return None

    def placement_wait(self, reason: str, servers_full: bool) -> None:
        return None

    def placement_resumed(self) -> None:
        return None


class Placer:
    """`server_for(entry)`: the entry's server, placing it first when it has none."""

    def __init__(self, store: PlacementStore, servers: Sequence[ServerSpec],
                 backing_off: Callable[[], Collection[str]],
                 observer: PlacementObserver | None = None, *,
                 memo_s: float = USAGE_MEMO_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.specs = {spec.name: spec for spec in servers}
        self._backing_off = backing_off
        self._observer = observer or NullPlacementObserver()
        self._memo_s = memo_s
        self._clock = clock
        self._usage: tuple[float, dict[str, int]] | None = None
        self._reading: asyncio.Task[dict[str, int]] | None = None
        self._since_read: Counter[str] = Counter()
        self.watch = WaitWatch()

    async def server_for(self, entry: ClaimedEntry) -> str:
        if entry.server is not None:
            if entry.server not in self.specs:
                raise UnknownServerError(entry.server)
            return entry.server  # sticky: retries, reclaims, manual runs, other replicas
        for _ in range(len(self.specs) + 1):
            answer = place(loads(self.specs.values(), await self._used(), self._backing_off()))
            self._observe(answer)
            if isinstance(answer, Wait):
                raise ServerWait(answer.message)
            spec = self.specs[answer.server]
            # Counted before the round trip, so entries placed at the same moment by this
            # replica spread by share instead of all picking the same server.
            self._since_read[spec.name] += 1
            try:
                held, server = await self.store.place(entry, spec.name, spec.capacity)
            except BaseException:
                self._since_read[spec.name] -= 1
                raise
            if server != spec.name:
                self._since_read[spec.name] -= 1
            if not held:
                raise LeaseLost()
            if server is not None:
                if server == spec.name:
                    self._observer.placed(server)
                elif server not in self.specs:  # the user's instance lives there
                    raise UnknownServerError(server)
                return server
            self._usage = None  # that server filled meanwhile: count again, place again
        full = Wait(WaitReason.ALL_FULL, "every active Evolution API server is full")
        self._observe(full)
        raise ServerWait(full.message)

    def _observe(self, answer: Placed | Wait) -> None:
        change = self.watch.observe(answer)
        if isinstance(answer, Wait):
            self._observer.placement_wait(str(answer.reason), self.watch.full)
        if change is WaitChange.STARTED and isinstance(answer, Wait):
            log.warning("new signups wait: no Evolution API server can take them",
                        extra={"reason": str(answer.reason), "detail": answer.message})
        elif change is WaitChange.RESUMED:
            self._observer.placement_resumed()
            log.info("placing new signups again")

    async def _used(self) -> dict[str, int]:
        """instances + in flight per server: one read shared by the entries placed within
        `memo_s`, plus this replica's placements since."""
        now = self._clock()
        if self._usage is None or now - self._usage[0] > self._memo_s:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._read())
            counts = await asyncio.shield(self._reading)
            if self._usage is None or self._usage[0] < now:
                self._usage = (self._clock(), counts)
                self._since_read.clear()
        used = dict(self._usage[1])
        for name, placed in self._since_read.items():
            used[name] = used.get(name, 0) + placed
        return used

    async def _read(self) -> dict[str, int]:
        return {name: usage.used for name, usage in (await self.store.server_usage()).items()}
