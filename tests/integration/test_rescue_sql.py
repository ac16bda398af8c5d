"""The rescue statement and the liveness lock against a real PostgreSQL, as the service's
least-privilege role: what `pg_locks` shows that role, and what the statement costs."""

from __future__ import annotations

import json
import uuid

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener.db import queries
from listener.db.liveness import liveness_lock_held
from listener.db.store import LeaseStore
from listener.dev.simulator import SimulatorOptions, running_simulator
from tests.harness import InProcessService, service_env, wait_until
from tests.pg import TestDatabase


def _processing_row(db: TestDatabase, owner: str) -> int:
    [(entry_id,)] = db.query(
        "INSERT INTO evolution_instance_creation_queue "
        "(user_id, status, lease_owner, attempts, lease_expires_at, next_attempt_at) "
        "VALUES (%s, 'processing', %s, 1, now() + interval '60 seconds', "
        "now() + interval '60 seconds') RETURNING id", (uuid.uuid4(), owner))
    return int(str(entry_id))


def _due_in_s(db: TestDatabase, entry_id: int) -> float:
    return float(db.scalar(  # type: ignore[arg-type]
        "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float8 "
        "FROM evolution_instance_creation_queue WHERE id = %s", (entry_id,)))


async def test_a_commands_lock_keeps_its_rows_and_its_end_releases_them(
    db: TestDatabase,
) -> None:
    owner = "host:1234:abcdef"
    entry_id = _processing_row(db, owner)
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=1) as pool:
        rescuer = LeaseStore(pool, "rescuer", lease_s=60)
        async with liveness_lock_held(db.service_dsn, owner) as held:
            assert held is True
            # A second session cannot take the same key: it is one owner's.
            async with liveness_lock_held(db.service_dsn, owner) as again:
                assert again is False
            assert await rescuer.rescue_dead() == 0
            assert _due_in_s(db, entry_id) > 50
        # The server ends the closed session (and its lock) a moment after the close.
        rescued = []

        async def rescued_once() -> bool:
            rescued.append(await rescuer.rescue_dead())
            return sum(rescued) > 0

        await wait_until(rescued_once, timeout_s=5)
        assert sum(rescued) == 1
    assert _due_in_s(db, entry_id) <= 0.5


def test_the_lock_shows_in_pg_locks_for_the_service_role(db: TestDatabase) -> None:
    owner = "a-replica"
    with psycopg.connect(db.service_dsn, autocommit=True) as holder, \
            psycopg.connect(db.service_dsn, autocommit=True) as reader:
        holder.execute(queries.TRY_LIVENESS_LOCK, {"owner": owner})
        rows = reader.execute(
            "SELECT l.objid = pg_catalog.hashtext(%s)::oid, l.database = d.oid "
            "FROM pg_catalog.pg_locks AS l, pg_catalog.pg_database AS d "
            "WHERE l.locktype = 'advisory' AND l.classid = %s::oid AND l.objsubid = 2 "
            "AND l.granted AND d.datname = current_database()",
            (owner, queries.LIVENESS_LOCK_CLASS)).fetchall()
    assert rows == [(True, True)]


def test_the_rescue_reads_only_live_rows_through_the_partial_index(db: TestDatabase) -> None:
    db.query(
        "INSERT INTO evolution_instance_creation_queue (user_id, status, processed_at) "
        "SELECT gen_random_uuid(), 'completed', now() FROM generate_series(1, 20000)")
    for n in range(5):
        _processing_row(db, f"owner-{n}")
    db.query("ANALYZE evolution_instance_creation_queue")
    sql = queries.CREATION_QUEUE.rescue_dead.replace("%(owner)s", "'me'")
    with db.connect() as conn:
        [(plan,)] = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall()
    text = json.dumps(plan)
    scans = []

    def walk(node: dict[str, object]) -> None:
        if node.get("Relation Name") == "evolution_instance_creation_queue":
            scans.append((node["Node Type"], node.get("Index Name")))
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            walk(child)

    walk(plan[0]["Plan"])  # type: ignore[index]
    assert scans, text
    assert all(kind != "Seq Scan" for kind, _ in scans), scans
    assert ("evolution_instance_creation_queue_due_idx" in
            {index for _, index in scans}), scans


def _lock_holders(db: TestDatabase, owner: str) -> list[tuple[object, ...]]:
    return db.query(
        "SELECT a.pid, a.application_name FROM pg_catalog.pg_locks AS l "
        "JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = %s::oid "
        "AND l.objid = pg_catalog.hashtext(%s)::oid AND l.objsubid = 2 AND l.granted",
        (queries.LIVENESS_LOCK_CLASS, owner))


async def test_a_replica_holds_its_lock_on_the_listen_session_and_retakes_it(
    db: TestDatabase,
) -> None:
    async with running_simulator(SimulatorOptions(seed=5)) as sim:
        replica = InProcessService(service_env(db.service_dsn, sim.base_url, sim.api_key))
        owner = replica.service.owner
        # Its key is held elsewhere first (an old session of the same owner, or a colliding
        # hash): the replica still starts, and takes the lock once the key is free.
        async with liveness_lock_held(db.service_dsn, owner) as held:
            assert held
            await replica.start()
            assert replica.service.listen.lock_held is False
        try:
            await wait_until(lambda: replica.service.listen.lock_held, timeout_s=6)
            [(pid, app)] = _lock_holders(db, owner)
            assert app == "evolution-listener:listen"
            db.query("SELECT pg_terminate_backend(%s)", (pid,))
            await wait_until(lambda: [p for p, _ in _lock_holders(db, owner) if p != pid],
                             timeout_s=10)
            await replica.wait_ready()
            assert replica.service.listen.lock_held
        finally:
            assert await replica.stop() == 0


async def test_a_rescued_row_keeps_its_place_before_a_later_backlog(db: TestDatabase) -> None:
    rescued_id = _processing_row(db, "dead-owner")
    db.query("INSERT INTO evolution_instance_creation_queue (user_id) "
             "SELECT gen_random_uuid() FROM generate_series(1, 5)")
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=1) as pool:
        store = LeaseStore(pool, "survivor", lease_s=60)
        assert await store.rescue_dead() == 1
        [first], _ = await store.claim(1)
    assert first.id == rescued_id and first.reclaimed


async def test_the_deletion_queue_gets_the_same_rescue_from_the_template(
    db: TestDatabase,
) -> None:
    deletions = queries.JobTable(table="evolution_instance_deletion_queue",
                                 channel="evolution_instance_deletion_queue")
    [(entry_id,)] = db.query(
        "INSERT INTO evolution_instance_deletion_queue "
        "(user_id, status, lease_owner, attempts, lease_expires_at, next_attempt_at) "
        "VALUES (%s, 'processing', 'dead-owner', 1, now() + interval '60 seconds', "
        "now() + interval '60 seconds') RETURNING id", (uuid.uuid4(),))
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=1) as pool:
        store = LeaseStore(pool, "survivor", lease_s=60, table=deletions)
        assert await store.rescue_dead() == 1
        [entry], _ = await store.claim(5)
    assert entry.id == entry_id and entry.reclaimed and entry.claim_seq == 2
