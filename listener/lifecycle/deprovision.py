"""Deprovisioning one deleted user (SPEC §9): delete the instance at its Evolution server,
then the user's rows and `completed`, together.

`DeletionJob` is the deletion queue's job handler; it runs on the same loop, attempt,
policy, breaker, reclaim limit and shutdown release as creations (`listener.core`). The
client comes through `client_for(server)`, the seam where a fleet of servers plugs in.

Idempotent: a 404 for the instance means it is already gone (an earlier attempt, another
replica, an operator), which is success. The delete is asynchronous at the server (the name
stays in use ~1 s, as recorded), so the attempt waits until the name is free: a completed
deletion means a re-signup of the same user creates a new instance, never adopts one that
is about to vanish.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from listener.core.jobs import JobKind, StepReporter
from listener.db.deletion_store import DeletionStore, DeletionTarget
from listener.db.store import ClaimedEntry
from listener.evolution.errors import EvolutionError, NotFoundError, TransientError
from listener.evolution.models import InstanceInfo
from listener.fleet.servers import DEFAULT_SERVER
from listener.lifecycle.provision import instance_name_for


class InstanceDeleter(Protocol):
    """What a deletion needs of an Evolution client (`EvolutionClient` is one)."""

    async def delete_instance(self, name: str) -> None: ...

    async def fetch_instance(self, name: str) -> InstanceInfo | None: ...


class DeletionRecords(Protocol):
    """What a deletion needs of its store (`DeletionStore` is one)."""

    async def target(self, entry: ClaimedEntry) -> DeletionTarget: ...

    async def complete(self, entry: ClaimedEntry) -> float | None: ...


ClientFor = Callable[[str | None], InstanceDeleter]

# The server's own 404 for an instance (`The "x" instance does not exist`), as opposed to a
# route that does not exist (`Cannot DELETE /...`, a proxy's page: a wrong base URL, which
# must not be taken for "deleted").
_INSTANCE_ABSENT = re.compile(r"(?i)\binstance\b.*\b(does not exist|not found)\b")

NAME_FREE_TIMEOUT_S = 5.0
NAME_FREE_POLL_S = 0.1


def already_gone(error: EvolutionError) -> bool:
    """True when the delete's error says the instance no longer exists: success."""
    return isinstance(error, NotFoundError) and bool(_INSTANCE_ABSENT.search(error.detail))


@dataclass(frozen=True)
class Deprovisioned:
    instance_name: str
    server: str
    already_gone: bool


class DeletionJob:
    """The deletion kind's handler."""

    def __init__(self, store: DeletionRecords, client_for: ClientFor, prefix: str, *,
                 name_free_timeout_s: float = NAME_FREE_TIMEOUT_S) -> None:
        self.store = store
        self.client_for = client_for
        self.prefix = prefix
        self.name_free_timeout_s = name_free_timeout_s

    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> Deprovisioned:
        target = await self.store.target(entry)
        name = target.instance_name or instance_name_for(self.prefix, entry.user_id)
        client = self.client_for(target.server)
        gone = False
        try:
            await client.delete_instance(name)
        except NotFoundError as error:
            if not already_gone(error):
                raise
            gone = True
        report("deleted", {"instance": name, "already_gone": gone})
        if not gone:
            await self._wait_name_free(client, name)
        return Deprovisioned(name, target.server or DEFAULT_SERVER, gone)

    async def _wait_name_free(self, client: InstanceDeleter, name: str) -> None:
        """Until the server's asynchronous cleanup has freed the name (bounded); past the
        bound the attempt fails as transient and is retried (the delete is repeated)."""
        deadline = time.monotonic() + self.name_free_timeout_s
        while await client.fetch_instance(name) is not None:
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"instance {name} is still being deleted at the server",
                    operation="delete_instance",
                )
            await asyncio.sleep(NAME_FREE_POLL_S)

    async def complete(self, entry: ClaimedEntry, result: Deprovisioned) -> float | None:
        return await self.store.complete(entry)

    def describe(self, result: Deprovisioned) -> dict[str, object]:
        return {"instance": result.instance_name, "server": result.server,
                "already_gone": result.already_gone}


def deletion_kind(store: DeletionStore, client_for: ClientFor, prefix: str) -> JobKind:
    """The deletion queue as a kind of job."""
    return JobKind(name="deletion", action="deprovisioning", store=store,
                   handler=DeletionJob(store, client_for, prefix))
