"""The deletion kind's branches on the in-memory store with a fake Evolution client: a 404
for the instance is success, a 404 of a missing route is not, an outage releases without a
retry spent, a delete still in progress is retried. No PostgreSQL, no HTTP."""

from __future__ import annotations

import uuid

import pytest

from listener.core.attempt import AttemptConfig
from listener.core.jobs import JobKind
from listener.core.loop import ClaimLoop, LoopConfig
from listener.core.memory_store import MemoryRow, MemoryStore
from listener.core.observer import NullObserver
from listener.db import queries
from listener.db.deletion_store import DeletionTarget
from listener.db.store import ClaimedEntry
from listener.evolution.errors import NotFoundError, ServiceUnavailableError
from listener.evolution.models import InstanceInfo
from listener.lifecycle.deprovision import DeletionJob, already_gone
from listener.ops.metrics import Metrics, WorkMetrics
from listener.policy import RetryPolicy

pytestmark = pytest.mark.unit

ABSENT = 'The "evo-x" instance does not exist'


class DeletionMemoryStore(MemoryStore):
    """The memory store with the deletion store's two extra reads and writes."""

    def __init__(self, target: DeletionTarget) -> None:
        super().__init__("deleter", lease_s=30)
        self._target = target

    async def target(self, entry: ClaimedEntry) -> DeletionTarget:
        return self._target

    async def complete(self, entry: ClaimedEntry) -> float | None:  # type: ignore[override]
        return 0.001 if await super().complete(entry) else None


class FakeServer:
    """Deletes answer `delete_error` if set; the name stays listed for `listed_polls` polls."""

    def __init__(self, delete_error: Exception | None = None, listed_polls: int = 0) -> None:
        self.delete_error = delete_error
        self.listed_polls = listed_polls
        self.deleted: list[str] = []
        self.servers: list[str | None] = []

    async def delete_instance(self, name: str) -> None:
        self.deleted.append(name)
        if self.delete_error is not None:
            raise self.delete_error

    async def fetch_instance(self, name: str) -> InstanceInfo | None:
        if self.listed_polls <= 0:
            return None
        self.listed_polls -= 1
        return InstanceInfo(instance_name=name, instance_id="i", integration="WHATSAPP-BAILEYS",
                            token=None, connection_status="close")


UNRECORDED = DeletionTarget(None, None)


async def drain_one(server: FakeServer, target: DeletionTarget = UNRECORDED,
                    name_free_timeout_s: float = 1.0) -> tuple[MemoryRow, ClaimLoop]:
    store = DeletionMemoryStore(target)
    row = store.add(uuid.UUID(int=7))

    def client_for(name: str | None) -> FakeServer:
        server.servers.append(name)
        return server

    job = DeletionJob(store, client_for, "evo-", name_free_timeout_s=name_free_timeout_s)
    kind = JobKind(name="deletion", action="deprovisioning", store=store, handler=job)

    async def probe() -> tuple[bool, str]:
        return False, "down"

    loop = ClaimLoop(
        LoopConfig(concurrency=2, sweep_interval_s=5.0, shutdown_grace_s=1.0), [kind],
        AttemptConfig(lease_s=30, max_reclaims=3, retry=RetryPolicy(max_retries=3, base_ms=800)),
        probe_for=lambda s: probe, observer=NullObserver())
    await loop.drain()
    return row, loop


def test_only_the_instances_own_404_means_already_gone() -> None:
    assert already_gone(NotFoundError(ABSENT, operation="delete_instance", status=404))
    assert not already_gone(NotFoundError("Cannot DELETE /instance/delete/evo-x",
                                          operation="delete_instance", status=404))


async def test_a_404_for_the_instance_completes_without_waiting() -> None:
    server = FakeServer(NotFoundError(ABSENT, operation="delete_instance", status=404),
                        listed_polls=100)
    row, loop = await drain_one(server)
    assert row.status == "completed" and loop.counts.completed == 1
    assert server.listed_polls == 100, "already gone: no wait for the name"
    assert server.deleted == ["evo-00000000-0000-0000-0000-000000000007"]


async def test_a_404_of_a_missing_route_is_not_success() -> None:
    server = FakeServer(NotFoundError("Cannot DELETE /instance/delete/x",
                                      operation="delete_instance", status=404))
    row, loop = await drain_one(server)
    assert row.status == "failed" and loop.counts.completed == 0


async def test_the_recorded_name_and_server_are_used() -> None:
    server = FakeServer()
    row, _ = await drain_one(server, DeletionTarget("custom-name", "east"))
    assert row.status == "completed"
    assert (server.deleted, server.servers) == (["custom-name"], ["east"])


async def test_an_outage_releases_the_deletion_with_no_retry_spent() -> None:
    server = FakeServer(ServiceUnavailableError("connection refused",
                                                operation="delete_instance", kind="connect"))
    row, loop = await drain_one(server)
    assert (row.status, row.retry_count, loop.counts.released) == ("pending", 0, 1)
    assert loop.backoff_reason() is not None


async def test_the_deletion_waits_for_the_name_to_be_free() -> None:
    server = FakeServer(listed_polls=2)
    row, _ = await drain_one(server)
    assert row.status == "completed" and server.listed_polls == 0


async def test_a_delete_still_in_progress_past_the_bound_is_retried() -> None:
    server = FakeServer(listed_polls=1000)
    row, loop = await drain_one(server, name_free_timeout_s=0.15)
    assert (row.status, row.retry_count, loop.counts.retried) == ("pending", 1, 1)
    assert "still being deleted" in (row.error_message or "")


def test_deletions_are_counted_apart_from_creations() -> None:
    metrics = Metrics()
    observer = WorkMetrics(metrics)
    observer.settled("deletion", "completed")
    observer.settled("creation", "failed")
    assert metrics.deprovisioned.labels(outcome="completed")._value.get() == 1
    assert metrics.provisioned.labels(outcome="completed")._value.get() == 0
    assert metrics.deprovisioned.labels(outcome="failed")._value.get() == 0


def test_the_race_rule_guards_only_the_deletion_claim() -> None:
    assert "c.status = 'processing'" in queries.DELETION_QUEUE.claim_due
    assert "c.lease_expires_at > now()" in queries.DELETION_QUEUE.claim_due
    assert "evolution_instance_creation_queue AS c" not in queries.CREATION_QUEUE.claim_due
