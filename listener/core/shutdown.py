"""Shutdown: let in-flight work finish within the grace, release the rest.

Released rows go back to pending with no retry spent and are due at once, so another replica
(or this one after its restart) takes them without waiting for a lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from listener.core.jobs import JobKind
from listener.db.store import ClaimedEntry
from listener.text import one_line

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
    unfinished = [held[task] for task in pending]
    released = await release_together(unfinished, release_bound_s)
    if pending:
        log.info("released unfinished entries", extra={"released": len(pending)})
    return released


async def release_together(entries: Sequence[tuple[JobKind, ClaimedEntry]],
                           bound_s: float = SHUTDOWN_RELEASE_BOUND_S) -> list[JobKind]:
    """Release `entries` back to pending, due at once, no retry spent: one attempt each,
    together, under one bound (the unit's TimeoutStopSec must not be outlived). What is
    not released waits for its lease, or for the rescue once this process is gone. The
    kinds of the entries whose release landed (the caller counts them)."""
    if not entries:
        return []
    results: list[bool | BaseException] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(bound_s):
            results = await asyncio.gather(
                *(kind.store.release(entry, 0.0, None) for kind, entry in entries),
                return_exceptions=True,
            )
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures or len(results) < len(entries):
        log.warning("could not release every entry; their leases (or the rescue) bring "
                    "them back", extra={"entries": len(entries),
                                        "not_released": len(entries) - results.count(True),
                                        "error": one_line(failures[0]) if failures
                                        else f"timed out after {bound_s:g} s"})
    return [kind for (kind, _), released in zip(entries, results, strict=False)
            if released is True]
