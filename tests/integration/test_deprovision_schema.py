"""Migration 0005 on a real PostgreSQL: a deleted profile queues its deletion and notifies after
commit; the creation row goes unless in flight; grants and RLS hold for every role."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from listener.db import queries
from tests.integration.test_supabase import _as, _signup, supabase_db  # noqa: F401
from tests.pg import TestDatabase

CREATION = "evolution_instance_creation_queue"
DELETION = "evolution_instance_deletion_queue"


def _notes(conn: psycopg.Connection[tuple[object, ...]], wait_s: float = 0.5) -> list[object]:
    return [json.loads(n.payload) for n in conn.notifies(timeout=wait_s)]


def _deletion_rows(db: TestDatabase, user_id: uuid.UUID) -> list[tuple[object, ...]]:
    return db.query(f"SELECT id, status, instance_name FROM {DELETION} WHERE user_id = %s",
                    (user_id,))


def test_deleted_profile_queues_a_deletion_and_notifies_after_commit(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query("INSERT INTO evolution_instances (user_id, instance_name) VALUES (%s, %s)",
             (user_id, f"custom-{user_id}"))
    with db.connect() as listener, psycopg.connect(db.dsn) as writer:
        listener.execute(queries.LISTEN_DELETIONS)
        writer.execute("DELETE FROM profiles WHERE id = %s", (user_id,))
        assert _notes(listener, 0.3) == [], "NOTIFY must wait for the commit"
        writer.commit()
        notes = _notes(listener)
    rows = _deletion_rows(db, user_id)
    assert len(rows) == 1
    row_id, status, name = rows[0]
    assert (status, name) == ("pending", f"custom-{user_id}")
    assert notes == [{"id": row_id, "user_id": str(user_id)}]


def test_rolled_back_delete_queues_nothing(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    with db.connect() as listener, psycopg.connect(db.dsn) as writer:
        listener.execute(queries.LISTEN_DELETIONS)
        writer.execute("DELETE FROM profiles WHERE id = %s", (user_id,))
        writer.rollback()
        assert _notes(listener) == []
    assert _deletion_rows(db, user_id) == []
    assert db.scalar(f"SELECT status FROM {CREATION} WHERE user_id = %s", (user_id,)) == "pending"


@pytest.mark.parametrize(("status", "kept"), [("pending", False), ("completed", False),
                                              ("failed", False), ("processing", True)])
def test_creation_row_goes_unless_in_flight(db: TestDatabase, status: str, kept: bool) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query(f"UPDATE {CREATION} SET status = %s WHERE user_id = %s", (status, user_id))
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    remaining = db.scalar(f"SELECT count(*) FROM {CREATION} WHERE user_id = %s", (user_id,))
    assert remaining == (1 if kept else 0)
    assert _deletion_rows(db, user_id)[0][1] == "pending"


def test_user_with_nothing_provisioned_is_still_queued(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    with db.connect() as conn:  # a user from before the triggers existed
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    assert [r[1:] for r in _deletion_rows(db, user_id)] == [("pending", None)]


def test_re_delete_of_a_re_created_user_re_arms_a_finished_row(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    first = _deletion_rows(db, user_id)[0][0]
    db.query(f"UPDATE {DELETION} SET status = 'completed', processed_at = now(), "
             "retry_count = 2 WHERE user_id = %s", (user_id,))
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    with db.connect() as listener:
        listener.execute(queries.LISTEN_DELETIONS)
        db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
        notes = _notes(listener)
    rows = db.query(f"SELECT id, status, retry_count, processed_at FROM {DELETION} "
                    "WHERE user_id = %s", (user_id,))
    assert rows == [(first, "pending", 0, None)]
    assert notes == [{"id": first, "user_id": str(user_id)}]


def test_delete_while_a_deletion_is_pending_leaves_it_and_does_not_notify(
    db: TestDatabase,
) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    db.query(f"UPDATE {DELETION} SET retry_count = 1, next_attempt_at = now() + interval '1 h' "
             "WHERE user_id = %s", (user_id,))
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    with db.connect() as listener:
        listener.execute(queries.LISTEN_DELETIONS)
        db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
        assert _notes(listener, 0.3) == []
    assert db.scalar(f"SELECT retry_count FROM {DELETION} WHERE user_id = %s", (user_id,)) == 1


def test_manual_retry_of_a_failed_deletion_makes_it_due_and_notifies(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    db.query(f"UPDATE {DELETION} SET status = 'failed', processed_at = now(), lease_owner = 'x', "
             "next_attempt_at = now() + interval '1 day' WHERE user_id = %s", (user_id,))
    with db.connect() as listener:
        listener.execute(queries.LISTEN_DELETIONS)
        db.query(f"UPDATE {DELETION} SET status = 'pending', retry_count = 0 WHERE user_id = %s",
                 (user_id,))
        notes = _notes(listener)
    assert [n["user_id"] for n in notes] == [str(user_id)]  # type: ignore[index]
    due, owner, processed = db.query(
        f"SELECT next_attempt_at <= now(), lease_owner, processed_at FROM {DELETION} "
        "WHERE user_id = %s", (user_id,))[0]
    assert (due, owner, processed) == (True, None, None)


def test_status_check_rejects_unknown_statuses(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    with pytest.raises(psycopg.errors.CheckViolation):
        db.query(f"UPDATE {DELETION} SET status = 'deleting' WHERE user_id = %s", (user_id,))


def test_due_index_is_partial(db: TestDatabase) -> None:
    definition = str(db.scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indexrelid = 'evolution_instance_deletion_queue_due_idx'::regclass"))
    assert "next_attempt_at" in definition and "WHERE" in definition


def test_seed_monitoring_sql_still_counts_creations_only(db: TestDatabase) -> None:
    kept, gone = uuid.uuid4(), uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s), (%s)", (kept, gone))
    db.query("DELETE FROM profiles WHERE id = %s", (gone,))
    stats = db.query("SELECT status, COUNT(*) as count, AVG(retry_count) as avg_retries "
                     f"FROM {CREATION} GROUP BY status;")
    assert [(s, c) for s, c, _ in stats] == [("pending", 1)]


def test_service_role_claims_updates_and_deletes_deletions(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query("INSERT INTO evolution_instances (user_id, instance_name) VALUES (%s, 'n')",
             (user_id,))
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    with psycopg.connect(db.service_dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT id FROM {DELETION} WHERE status = 'pending' FOR UPDATE SKIP LOCKED"
        ).fetchone()
        assert row is not None
        conn.execute(f"UPDATE {DELETION} SET status = 'processing', lease_owner = 'me' "
                     "WHERE id = %s", (row[0],))
        conn.execute("DELETE FROM evolution_instances WHERE user_id = %s", (user_id,))
        conn.execute(f"DELETE FROM {DELETION} WHERE id = %s", (row[0],))
        conn.execute(f"INSERT INTO {DELETION} (user_id) VALUES (%s)", (uuid.uuid4(),))
        conn.execute("INSERT INTO evolution_instance_repairs (user_id, instance_name) "
                     "VALUES (%s, 'n')", (user_id,))


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_see_nothing_of_the_new_tables(supabase_db: str,  # noqa: F811
                                                 role: str) -> None:
    user_id = uuid.uuid4()
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        _signup(conn, user_id)
        conn.execute("DELETE FROM auth.users WHERE id = %s", (user_id,))  # cascades
        row = conn.execute(f"SELECT status FROM {DELETION} WHERE user_id = %s",
                           (user_id,)).fetchone()
        assert row == ("pending",), "the auth cascade must queue the deletion"
    with _as(supabase_db, role, user_id) as conn:
        for table in (DELETION, "evolution_instance_repairs"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"UPDATE {DELETION} SET status = 'failed'")


def _deleted_server(db: TestDatabase, user_id: uuid.UUID) -> object:
    db.query("DELETE FROM profiles WHERE id = %s", (user_id,))
    return db.scalar(f"SELECT server FROM {DELETION} WHERE user_id = %s", (user_id,))


def test_0007_deletion_records_the_instance_rows_server_first(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    db.query(f"UPDATE {CREATION} SET status = 'completed', server = 'placed' "
             "WHERE user_id = %s", (user_id,))
    db.query("INSERT INTO evolution_instances (user_id, instance_name, server) "
             "VALUES (%s, %s, 'east')", (user_id, f"evo-{user_id}"))
    assert _deleted_server(db, user_id) == "east"


def test_0007_deletion_records_the_creations_placement_read_before_its_row_goes(
    db: TestDatabase,
) -> None:
    placed, unplaced = uuid.uuid4(), uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s), (%s)", (placed, unplaced))
    db.query(f"UPDATE {CREATION} SET server = 'west' WHERE user_id = %s", (placed,))
    assert _deleted_server(db, placed) == "west"
    assert db.query(f"SELECT 1 FROM {CREATION} WHERE user_id = %s", (placed,)) == [], \
        "the pending creation row is still removed by the trigger"
    assert _deleted_server(db, unplaced) is None, "no server known: the single server"


def test_0007_reconciles_queued_deletion_records_the_server_too(db: TestDatabase) -> None:
    user_id = uuid.uuid4()
    db.query("INSERT INTO evolution_instances (user_id, instance_name, server) "
             "VALUES (%s, %s, 'north')", (user_id, f"evo-{user_id}"))
    db.query(queries.QUEUE_DELETION.replace("%(user_id)s", "%s").replace(
        "%(instance_name)s", "%s"), (user_id, f"evo-{user_id}"))
    assert db.scalar(f"SELECT server FROM {DELETION} WHERE user_id = %s", (user_id,)) == "north"
