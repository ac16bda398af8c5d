"""Deprovision (SPEC §9) against a real PostgreSQL and the simulator over real HTTP: a deleted
profile's instance is deleted at the server and its rows removed, woken by NOTIFY; through an
outage with no retry spent; after an in-flight creation (race rule); by two replicas at once;
not at all with LISTENER_DEPROVISION=off; and a re-signup of the same user ends with one live
instance."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from listener import admin
from listener.db import pool as db_pool
from listener.dev.simulator import ScriptedFault, Simulator, SimulatorOptions, running_simulator
from tests.harness import (
    InProcessService,
    all_in_status,
    instance_rows,
    queue_rows,
    service_env,
    signup,
    wait_until,
)
from tests.pg import TestDatabase

DELETION = "evolution_instance_deletion_queue"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_simulator(SimulatorOptions(seed=11)) as simulator:
        yield simulator


def _env(db: TestDatabase, sim: Simulator, **overrides: object) -> dict[str, str]:
    return service_env(db.service_dsn, sim.base_url, sim.api_key,
                       LISTENER_SWEEP_INTERVAL_S=3600, **overrides)


def name(user: uuid.UUID) -> str:
    return f"evo-{user}"


def deletions(db: TestDatabase) -> dict[uuid.UUID, dict[str, object]]:
    rows = db.query(f"SELECT user_id, status, retry_count, error_message, server FROM {DELETION}")
    return {r[0]: {"status": r[1], "retry_count": r[2], "error": r[3], "server": r[4]}
            for r in rows}  # type: ignore[misc]


def delete_profiles(db: TestDatabase, *users: uuid.UUID) -> None:
    db.query("DELETE FROM profiles WHERE id = ANY(%s)", (list(users),))


def live(sim: Simulator, instance: str) -> bool:
    """At the server and not being deleted."""
    found = sim.instances.get(instance)
    return found is not None and not found.deleting


def deletes(sim: Simulator, status: int | None = None) -> Counter[str]:
    return Counter(r.instance for r in sim.requests
                   if r.operation == "delete_instance" and r.instance
                   and (status is None or r.status == status))


async def provisioned(db: TestDatabase, users: list[uuid.UUID], timeout_s: float = 15) -> None:
    await wait_until(lambda: all_in_status(db.dsn, users), timeout_s=timeout_s)


def done(db: TestDatabase, users: list[uuid.UUID]) -> bool:
    rows, instances, creations = deletions(db), instance_rows(db.dsn), queue_rows(db.dsn)
    return all(rows.get(u, {}).get("status") == "completed" and u not in instances
               and u not in creations for u in users)


async def test_deleted_profile_is_deprovisioned_within_2s_through_notify(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    try:
        [user] = signup(db.dsn)
        await provisioned(db, [user])
        assert live(sim, name(user))
        started = time.monotonic()
        delete_profiles(db, user)
        await wait_until(lambda: done(db, [user]), timeout_s=5, interval_s=0.02)
        elapsed = time.monotonic() - started
        metrics = service.service.metrics
        completed_counter = metrics.deprovisioned.labels(outcome="completed")
        # Counted just after the commit the rows show: wait for it, briefly.
        await wait_until(lambda: completed_counter._value.get() >= 1, timeout_s=2)
        completed = completed_counter._value.get()
        creations = metrics.provisioned.labels(outcome="completed")._value.get()
    finally:
        assert await service.stop() == 0
    assert elapsed < 2.0, f"took {elapsed:.2f}s: it waited for something other than NOTIFY"
    assert not live(sim, name(user)), "the instance is deleted at the server"
    assert deletes(sim, 200) == {name(user): 1}
    row = deletions(db)[user]
    assert row["retry_count"] == 0 and row["error"] is None
    assert row["server"] == "default", "0007: the deletion records the instance's server"
    assert (completed, creations) == (1, 1), "deletions counted apart from creations"


async def test_delete_during_an_outage_completes_after_recovery_with_no_retry_spent(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    try:
        [user] = signup(db.dsn)
        await provisioned(db, [user])
        await sim.down()
        delete_profiles(db, user)
        await wait_until(lambda: service.service.worker.backoff_reason() is not None,
                         timeout_s=10)
        await asyncio.sleep(0.5)
        assert deletions(db)[user]["status"] in ("pending", "processing")
        assert user in instance_rows(db.dsn), "nothing removed while the server is down"
        await sim.up()
        await wait_until(lambda: done(db, [user]), timeout_s=30)
        released = service.service.metrics.deprovisioned.labels(outcome="released")._value.get()
    finally:
        assert await service.stop() == 0
    assert deletions(db)[user]["retry_count"] == 0
    assert released >= 1, "the deletion was released during the outage, not retried"
    assert not live(sim, name(user))


async def test_deletion_racing_an_in_flight_creation_leaves_no_instance(
    db: TestDatabase, sim: Simulator
) -> None:
    # The create is held 1.5 s at the server: a deletion not waiting would find nothing to
    # delete (404), finish, and the creation would then leave an instance behind.
    sim.add_fault(ScriptedFault(kind="delay", operation="create_instance", delay_s=1.5))
    service = await InProcessService(_env(db, sim)).start()
    try:
        [user] = signup(db.dsn)
        await wait_until(lambda: queue_rows(db.dsn).get(user, {}).get("status") == "processing",
                         timeout_s=5, interval_s=0.01)
        delete_profiles(db, user)  # the trigger leaves the in-flight creation row
        assert queue_rows(db.dsn)[user]["status"] == "processing"
        await wait_until(lambda: done(db, [user]), timeout_s=30)
    finally:
        assert await service.stop() == 0
    created = [i for i, r in enumerate(sim.requests)
               if r.operation == "create_instance" and r.status == 201]
    deleted = [i for i, r in enumerate(sim.requests)
               if r.operation == "delete_instance" and r.status == 200]
    assert len(created) == 1 and len(deleted) == 1, "no 404: the delete came after the create"
    assert deleted[0] > created[0], "the deletion waited for the creation, then deleted it"
    assert not live(sim, name(user)), "no instance left behind"
    assert user not in instance_rows(db.dsn), "the completed creation's row was removed"


async def test_two_replicas_delete_each_instance_once_and_never_fail(
    db: TestDatabase, sim: Simulator
) -> None:
    sim.options.delete_delay_s = 0.2
    replicas = [await InProcessService(_env(db, sim)).start() for _ in range(2)]
    try:
        users = signup(db.dsn, 30)
        await provisioned(db, users, timeout_s=30)
        sim.delete_behind_the_back(name(users[0]))  # already gone: the delete answers 404
        sim.complete_deletes()
        delete_profiles(db, *users)
        await wait_until(lambda: done(db, users), timeout_s=30)
        counters = [r.service.metrics.deprovisioned.labels(outcome="completed") for r in replicas]
        await wait_until(lambda: sum(c._value.get() for c in counters) >= 30, timeout_s=2)
        outcomes = [
            {o: r.service.metrics.deprovisioned.labels(outcome=o)._value.get()
             for o in ("completed", "retried", "failed")} for r in replicas]
    finally:
        for replica in replicas:
            assert await replica.stop() == 0
    assert sum(o["completed"] for o in outcomes) == 30, outcomes
    assert sum(o["retried"] + o["failed"] for o in outcomes) == 0, outcomes
    assert all(row["retry_count"] == 0 for row in deletions(db).values())
    assert deletes(sim) == dict.fromkeys(map(name, users), 1), "each instance deleted once"
    assert deletes(sim, 404) == {name(users[0]): 1}, "404 = already gone = success"
    assert not any(live(sim, name(u)) for u in users)


async def test_deprovision_off_leaves_deletions_pending_and_instances_in_place(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim, LISTENER_DEPROVISION="off")).start()
    try:
        [user] = signup(db.dsn)
        await provisioned(db, [user])
        delete_profiles(db, user)
        await asyncio.sleep(1.5)
        before = service.service.worker.counts.completed
        drained = await service.service.worker.drain()
    finally:
        assert await service.stop() == 0
    assert drained.completed == before, "drain claims no deletion either"
    assert deletions(db)[user]["status"] == "pending"
    assert live(sim, name(user)) and deletes(sim) == Counter()
    assert user in instance_rows(db.dsn)


async def test_signing_up_again_after_a_deletion_ends_with_one_live_instance(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    try:
        [user] = signup(db.dsn)
        await provisioned(db, [user])
        first = sim.instances[name(user)].instance_id
        delete_profiles(db, user)
        await wait_until(lambda: done(db, [user]), timeout_s=10, interval_s=0.02)
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))  # at once, same id
        await provisioned(db, [user])
        await asyncio.sleep(1.5)  # past the server's asynchronous delete of the first
    finally:
        assert await service.stop() == 0
    assert live(sim, name(user)), "exactly one live instance: the new one"
    second = sim.instances[name(user)].instance_id
    assert second != first
    assert instance_rows(db.dsn)[user]["instance_id"] == second


async def test_cleanup_removes_finished_deletions_older_than_the_cutoff(
    db: TestDatabase
) -> None:
    old, recent, pending = (uuid.uuid4() for _ in range(3))
    for user in (old, recent, pending):
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))
    delete_profiles(db, old, recent, pending)
    db.query(f"UPDATE {DELETION} SET status = 'completed', processed_at = now() - "
             "interval '40 days' WHERE user_id = %s", (old,))
    db.query(f"UPDATE {DELETION} SET status = 'completed', processed_at = now() - "
             "interval '2 days' WHERE user_id = %s", (recent,))
    pool = db_pool.make_pool(db.dsn, max_size=2)
    await pool.open(wait=True, timeout=15)
    try:
        deleted = await admin.cleanup(pool, 30)
    finally:
        await pool.close()
    assert deleted == 1
    assert set(deletions(db)) == {recent, pending}


async def test_a_deletion_during_a_creation_drain_is_served_alongside_it(
    db: TestDatabase,
) -> None:
    """The deletion's NOTIFY marks deletions due: the creations' riding claims stop until a
    round gives deletions their share, instead of the whole backlog going first."""
    async with running_simulator(SimulatorOptions(seed=12, latency_ms=10)) as sim:
        service = await InProcessService(_env(db, sim, LISTENER_CONCURRENCY=4)).start()
        try:
            [first] = signup(db.dsn)
            await provisioned(db, [first])
            users = signup(db.dsn, 300)

            def created() -> int:
                rows = queue_rows(db.dsn)
                return sum(rows.get(u, {}).get("status") == "completed" for u in users)

            await wait_until(lambda: created() >= 20, timeout_s=30)
            delete_profiles(db, first)
            await wait_until(lambda: done(db, [first]), timeout_s=30, interval_s=0.02)
            created_by_then = created()
            await provisioned(db, users, timeout_s=120)
        finally:
            assert await service.stop() == 0
    assert created_by_then < 200, f"the deletion waited for {created_by_then} creations"
    assert deletes(sim, 200) == {name(first): 1}
