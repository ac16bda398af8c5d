"""The rescuer: a dead replica's rows are claimed again within seconds, not after the lease.

Every replica holds a liveness lock while it lives (`listener.db.liveness`). About once a
second (jittered, so replicas do not ask in lockstep) each replica asks every job table to
make due the `processing` rows whose owner holds no lock any more; the claim then takes them
as reclaims, fenced as ever. The lease stays the fallback (an owner cut off from the
database, a hash collision). A database error is logged once per streak and retried at the
next tick: rescuing is an optimisation, never a reason to stop serving.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from listener.core.jobs import JobKind
from listener.text import one_line

log = logging.getLogger("listener.rescue")

RESCUE_PERIOD_S = 1.0
RESCUE_JITTER = 0.25  # each wait is the period times 1 ± this


def rescue_wait_s(period_s: float = RESCUE_PERIOD_S, jitter: float = RESCUE_JITTER,
                  rng: random.Random | None = None) -> float:
    return period_s * (rng or random).uniform(1 - jitter, 1 + jitter)


class Rescuer:
    """Runs each kind's rescue statement every tick; `wake` (the local loop) and
    `on_rescued(kind name, rows)` are called when some rows were made due."""

    def __init__(self, kinds: Sequence[JobKind], *, wake: Callable[[], None],
                 on_rescued: Callable[[str, int], None] = lambda kind, rows: None,
                 period_s: float = RESCUE_PERIOD_S) -> None:
        self.kinds = tuple(kinds)
        self.period_s = period_s
        self._wake = wake
        self._on_rescued = on_rescued
        self._failing = False
        self.rescued = 0

    async def tick(self) -> int:
        """One pass over every kind; how many rows were made due."""
        total = 0
        for kind in self.kinds:
            try:
                rows = await kind.store.rescue_dead()
            except Exception as error:  # a database error above all; never fatal here
                if not self._failing:
                    log.warning("rescue of dead replicas' rows failed; retrying",
                                extra={"kind": kind.name, "error": one_line(error, 300)})
                self._failing = True
                continue
            if self._failing:
                log.info("rescue of dead replicas' rows works again", extra={"kind": kind.name})
            self._failing = False
            if rows:
                log.warning("rescued a dead replica's entries",
                            extra={"kind": kind.name, "entries": rows})
                self._on_rescued(kind.name, rows)
                total += rows
        if total:
            self.rescued += total
            self._wake()
        return total

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await asyncio.sleep(rescue_wait_s(self.period_s))
            await self.tick()
