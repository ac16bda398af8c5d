"""A kind of job: which table it is claimed from, and what an attempt of it does.

The loop and the attempt are the same for every kind; a kind brings its store (the shared
claim/settle transitions on its own table) and a handler (the work, and the statement that
completes it). Today: creation. Deletion is a second `JobKind` on its own table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from listener.core.batcher import CompletionBatcher
from listener.core.store import JobStore
from listener.db.store import ClaimedEntry
from listener.fleet.servers import DEFAULT_SERVER

StepReporter = Callable[[str, dict[str, object]], None]

# Which Evolution server an entry's attempt talks to, decided before any HTTP (SPEC §10):
# creation places a new entry and records the choice on its row; raises
# `policy.ServerWait` (no server can take it now) or `LeaseLost`.
Placer = Callable[[ClaimedEntry], Awaitable[str]]


class LeaseLost(Exception):
    """The claim was no longer ours when placement tried to record the server."""


class JobHandler(Protocol):
    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> Any:
        """Do the work (idempotently: a retry or a reclaim may run it again). Raise on
        failure; the policy decides what the error means."""
        ...

    async def complete(self, entry: ClaimedEntry, result: Any) -> float | None:
        """Record success, fenced on the claim: seconds since the entry's insert, or None
        when the lease was lost and nothing was written."""
        ...

    def describe(self, result: Any) -> dict[str, object]:
        """Log fields of a success."""
        ...


@dataclass(frozen=True)
class JobKind:
    name: str  # "creation"; metrics and task names
    action: str  # what the log says an attempt does: "provisioning"
    store: JobStore
    handler: JobHandler
    # None: the server recorded on the entry (the deletion row's), else DEFAULT_SERVER.
    placer: Placer | None = None
    # The handler's batched completion, when its statement can also claim (see batcher.py):
    # the loop then refills a drain's freed slots through it.
    completions: CompletionBatcher[Any] | None = None

    async def server_for(self, entry: ClaimedEntry) -> str:
        """The server whose client and outage breaker an attempt of `entry` uses."""
        if self.placer is not None:
            return await self.placer(entry)
        return entry.server or DEFAULT_SERVER
