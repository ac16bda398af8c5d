"""The database side on a real PostgreSQL: trigger, NOTIFY, manual retry, indexes, migrations."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import psycopg
import pytest

from listener.db import queries
from listener.db.migrate import MigrationError, load_migrations, migrate
from tests.pg import PgServer, TestDatabase, drop_database, with_database


def _listen(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(queries.LISTEN)


def _drain(
    conn: psycopg.Connection[tuple[object, ...]], wait_s: float = 0.5
) -> list[dict[str, object]]:
    return [json.loads(n.payload) for n in conn.notifies(timeout=wait_s)]


def test_profile_insert_queues_one_row_and_notifies_after_commit(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    with db.connect() as listener, psycopg.connect(db.dsn) as writer:
        _listen(listener)
        writer.execute("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
        assert _drain(listener, 0.3) == [], "NOTIFY must wait for the commit"
        writer.commit()
        notes = _drain(listener)
    rows = db.query(
        "SELECT id, status, retry_count FROM evolution_instance_creation_queue WHERE user_id = %s",
        (user_id,),
    )
    assert len(rows) == 1
    queue_id, status, retry_count = rows[0]
    assert (status, retry_count) == ("pending", 0)
    assert notes == [{"id": queue_id, "user_id": str(user_id)}]


def test_rolled_back_signup_neither_queues_nor_notifies(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    with db.connect() as listener, psycopg.connect(db.dsn) as writer:
        _listen(listener)
        writer.execute("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
        writer.rollback()
        assert _drain(listener) == []
    assert db.scalar("SELECT count(*) FROM evolution_instance_creation_queue") == 0


def test_second_signup_for_a_queued_user_adds_no_row_and_no_notification(
    db: TestDatabase,
) -> None:
    user_id = uuid.uuid4()
    # Queued already (e.g. by `provision USER_ID`); a profile delete would now take a
    # pending row with it (0005: a deleted user's creation not yet started is moot).
    db.query("INSERT INTO evolution_instance_creation_queue (user_id) VALUES (%s)", (user_id,))
    with db.connect() as listener:
        _listen(listener)
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
        assert _drain(listener) == []
    assert db.scalar(
        "SELECT count(*) FROM evolution_instance_creation_queue WHERE user_id = %s", (user_id,)
    ) == 1


def test_many_profiles_in_one_statement_each_get_one_row(db: TestDatabase) -> None:
    db.query("INSERT INTO profiles (id) SELECT gen_random_uuid() FROM generate_series(1, 50)")
    assert db.scalar("SELECT count(*) FROM evolution_instance_creation_queue") == 50
    assert db.scalar("SELECT count(DISTINCT user_id) FROM evolution_instance_creation_queue") == 50


def _set_status(db: TestDatabase, user_id: uuid.UUID, status: str, **extra: object) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in extra)
    db.query(
        f"UPDATE evolution_instance_creation_queue SET status = %(status)s"
        f"{', ' + sets if sets else ''}, processed_at = now() WHERE user_id = %(user_id)s",
        {"status": status, "user_id": user_id, **extra},
    )


@pytest.mark.parametrize("from_status", ["failed", "completed"])
def test_seed_manual_retry_notifies_and_makes_the_row_due(
    db: TestDatabase, from_status: str
) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    _set_status(
        db, user_id, from_status, retry_count=3, error_message="boom",
        next_attempt_at="2100-01-01T00:00:00Z",
    )
    with db.connect() as listener:
        _listen(listener)
        # The seed's manual retry, verbatim but for the placeholder.
        db.query(
            """
UPDATE evolution_instance_creation_queue
SET
  status = 'pending',
  retry_count = 0,
  error_message = NULL,
  updated_at = NOW()
WHERE user_id = '%s';
""".replace("'%s'", f"'{user_id}'")
        )
        notes = _drain(listener)
    assert [n["user_id"] for n in notes] == [str(user_id)]
    row = db.query(
        "SELECT status, retry_count, error_message, next_attempt_at <= now(), processed_at "
        "FROM evolution_instance_creation_queue WHERE user_id = %s",
        (user_id,),
    )[0]
    assert row == ("pending", 0, None, True, None)


def test_status_updates_other_than_manual_retry_do_not_notify(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    with db.connect() as listener:
        _listen(listener)
        _set_status(db, user_id, "processing")
        _set_status(db, user_id, "failed")
        assert _drain(listener) == []


def test_queue_rejects_unknown_status(db: TestDatabase) -> None:
    db.query("INSERT INTO profiles (id) VALUES (gen_random_uuid())")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.query("UPDATE evolution_instance_creation_queue SET status = 'done'")


def test_migrate_twice_is_a_no_op(db: TestDatabase) -> None:
    report = asyncio.run(migrate(db.dsn))
    assert report.applied == []
    assert report.already == [m.filename for m in load_migrations()]
    assert report.changed == []


def test_two_concurrent_migrations_on_a_fresh_database(pg_server: PgServer) -> None:
    name = f"el_fresh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(pg_server.admin_dsn, name)

        async def both() -> list[object]:
            return list(await asyncio.gather(migrate(dsn), migrate(dsn)))

        first, second = asyncio.run(both())
        applied = sorted([first.applied, second.applied], key=len)  # type: ignore[attr-defined]
        every = [m.filename for m in load_migrations()]
        assert applied == [[], every]
        with psycopg.connect(dsn) as conn:
            recorded = conn.execute(
                "SELECT count(*) FROM evolution_listener_migrations"
            ).fetchone()
            assert recorded == (len(every),)
            trigger = conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = %s", (queries.TRIGGER_NAME,)
            ).fetchone()
            assert trigger == (1,)
    finally:
        drop_database(pg_server.admin_dsn, name)


def test_failing_migration_names_the_file_and_leaves_nothing_applied(
    db: TestDatabase, tmp_path: Path
) -> None:
    for migration in load_migrations():
        (tmp_path / migration.filename).write_text(migration.sql)
    (tmp_path / "0900_broken.sql").write_text(
        "CREATE TABLE half_applied (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError) as raised:
        asyncio.run(migrate(db.dsn, tmp_path))
    assert "0900_broken.sql" in str(raised.value)
    assert "no_such_function" in str(raised.value)
    assert db.scalar("SELECT to_regclass('public.half_applied')") is None
    assert db.scalar(
        "SELECT count(*) FROM evolution_listener_migrations WHERE version = '0900'"
    ) == 0


def _claim_plan(db: TestDatabase) -> dict[str, object]:
    """Run the claim under EXPLAIN ANALYZE, BUFFERS, and roll it back."""
    with psycopg.connect(db.dsn, cursor_factory=psycopg.ClientCursor) as conn:
        cursor = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + queries.CLAIM_DUE,
            {"limit": 8, "owner": "explain", "lease_s": 60, "paused": []},
        )
        row = cursor.fetchone()
        assert row is not None
        plan: dict[str, object] = row[0][0]["Plan"]
        conn.rollback()
    return plan


def _nodes(plan: dict[str, object]) -> list[dict[str, object]]:
    found = [plan]
    for child in plan.get("Plans", []):  # type: ignore[attr-defined]
        found += _nodes(child)
    return found


def _blocks(plan: dict[str, object]) -> int:
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])  # type: ignore[call-overload]


def _add_rows(db: TestDatabase, status: str, count: int) -> None:
    db.query(
        "INSERT INTO evolution_instance_creation_queue (user_id, status, processed_at) "
        "SELECT gen_random_uuid(), %s, CASE WHEN %s = 'completed' THEN now() END "
        "FROM generate_series(1, %s)",
        (status, status, count),
    )
    db.query("VACUUM ANALYZE evolution_instance_creation_queue")


def test_claim_uses_the_due_index_and_ignores_finished_rows(db: TestDatabase) -> None:
    _add_rows(db, "pending", 20)
    _add_rows(db, "completed", 1_000)
    small = _claim_plan(db)
    _add_rows(db, "completed", 99_000)
    large = _claim_plan(db)

    scans = [
        n for n in _nodes(large)
        if n.get("Relation Name") == "evolution_instance_creation_queue"
        and n["Node Type"] != "ModifyTable"
    ]
    assert scans, large
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in scans), scans
    due_index = "evolution_instance_creation_queue_due_idx"
    due_scans = [n for n in scans if n.get("Index Name") == due_index]
    assert due_scans, scans
    # Each scan reads only rows still to do, a batch's worth: the claim reads the batch, the
    # look-ahead for the next due row skips the batch it just claimed and stops at the next.
    for node in due_scans:
        read = int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0))  # type: ignore[call-overload]
        assert read <= 2 * 8 + 1, node
    # 100 times more finished rows, the same pages touched (give or take a B-tree level).
    assert _blocks(large) <= 1.5 * _blocks(small), (_blocks(small), _blocks(large))
