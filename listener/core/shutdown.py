"""Shutdown: let in-flight work finish within the grace, release the rest.

Released rows go back to pending with no retry spent and are due at once, so another replica
(or this one after its restart) takes them without waiting for a lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from listener.core.jobs import JobKind
from listener.db.store import ClaimedEntry

log = logging.getLogger("listener.worker")

SHUTDOWN_RELEASE_BOUND_S = 5.0


async def finish_or_release(
    inflight: Mapping[asyncio.Task[object], tuple[JobKind, ClaimedEntry]],
    grace_s: float, release_bound_s: float = SHUTDOWN_RELEASE_BOUND_S,
) -> list[JobKind]:
    """Wait up to `grace_s` for the tasks, cancel the rest and release their entries; the
    kinds of the entries whose release landed (the caller counts them)."""
    if not inflight:
        return []
    log.info("draining in-flight work", extra={"in_flight": len(inflight), "grace_s": grace_s})
    held = dict(inflight)
    _done, pending = await asyncio.wait(list(held), timeout=grace_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    # One attempt each, together, under one bound: the unit's TimeoutStopSec must not be
    # outlived; what is not released here waits for its lease to expire.
    unfinished = [held[task] for task in pending]
    results: list[bool | BaseException] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(release_bound_s):
            results = await asyncio.gather(
                *(kind.store.release(entry, 0.0, None) for kind, entry in unfinished),
                return_exceptions=True,
            )
    if pending:
        log.info("released unfinished entries", extra={"released": len(pending)})
    return [kind for (kind, _), released in zip(unfinished, results, strict=False)
            if released is True]
