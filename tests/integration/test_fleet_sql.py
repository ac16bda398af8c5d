"""Many servers on a real PostgreSQL (SPEC §10): the column, usage counts, sticky placement."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg

from listener.db import queries
from listener.db.migrate import load_migrations
from tests.pg import TestDatabase


def _signup(db: TestDatabase) -> uuid.UUID:
    user_id = uuid.uuid4()
    db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    return user_id


def _claim(db: TestDatabase, user_id: uuid.UUID, owner: str = "r1") -> dict[str, object]:
    """Put a user's entry in `processing` under `owner`, as a claim does: the fencing token
    `attempts` goes up by one."""
    row = db.query(
        """UPDATE evolution_instance_creation_queue
           SET status = 'processing', attempts = attempts + 1, lease_owner = %s,
               lease_expires_at = now() + interval '60 s'
           WHERE user_id = %s RETURNING id, attempts""",
        (owner, user_id),
    )[0]
    return {"id": row[0], "owner": owner, "claim_seq": row[1]}


def _place(dsn: str, lease: dict[str, object], server: str, capacity: int | None) -> list[object]:
    """PLACE as the service does it: lock the server, place, in one transaction."""
    with psycopg.connect(dsn) as conn:
        conn.execute(queries.PLACE_LOCK, {"server": server})
        rows = conn.execute(queries.PLACE, {**lease, "server": server,
                                            "capacity": capacity}).fetchall()
    return [r[0] for r in rows]


def _instance(db: TestDatabase, server: str | None) -> uuid.UUID:
    user_id = _signup(db)
    if server is None:  # the previous release's insert: no server named
        db.query("INSERT INTO evolution_instances (user_id, instance_name) VALUES (%s, %s)",
                 (user_id, f"evo-{user_id}"))
    else:
        db.query("INSERT INTO evolution_instances (user_id, instance_name, server) "
                 "VALUES (%s, %s, %s)", (user_id, f"evo-{user_id}", server))
    db.query("UPDATE evolution_instance_creation_queue SET status = 'completed', server = %s "
             "WHERE user_id = %s", (server or "default", user_id))
    return user_id


def _usage(db: TestDatabase) -> dict[str, tuple[int, int]]:
    """server -> (instances, placements in flight), read as the service role."""
    with psycopg.connect(db.service_dsn) as conn:
        rows = conn.execute(queries.SERVER_USAGE).fetchall()
    return {str(s): (int(i), int(f)) for s, i, f in rows}


def test_the_columns_and_defaults(db: TestDatabase) -> None:
    old = _instance(db, None)
    assert db.scalar("SELECT server FROM evolution_instances WHERE user_id = %s",
                     (old,)) == "default"
    fresh = _signup(db)
    assert db.scalar("SELECT server FROM evolution_instance_creation_queue WHERE user_id = %s",
                     (fresh,)) is None


def test_usage_counts_instances_plus_placements_in_flight(db: TestDatabase) -> None:
    for server in ("a", "a", "b"):
        _instance(db, server)
    for status in ("pending", "processing"):  # in flight on b
        db.query("UPDATE evolution_instance_creation_queue SET status = %s, server = 'b' "
                 "WHERE user_id = %s", (status, _signup(db)))
    db.query("UPDATE evolution_instance_creation_queue SET status = 'failed', server = 'c' "
             "WHERE user_id = %s", (_signup(db),))  # finished: holds no place
    _signup(db)  # not placed yet
    # A retried completed entry of an instance on a: counted once, through the instance.
    retried = _instance(db, "a")
    db.query("UPDATE evolution_instance_creation_queue SET status = 'pending' "
             "WHERE user_id = %s", (retried,))
    assert _usage(db) == {"a": (3, 0), "b": (1, 2)}


def test_place_writes_once_and_every_later_call_reads_the_first_choice(
    db: TestDatabase,
) -> None:
    user = _signup(db)
    lease = _claim(db, user)
    assert _place(db.service_dsn, lease, "a", None) == ["a"]
    # A retry of the same lease asking for another server keeps the first one.
    assert _place(db.service_dsn, lease, "b", None) == ["a"]
    # Released, then reclaimed by another replica: still a.
    db.query("UPDATE evolution_instance_creation_queue SET status = 'pending', "
             "lease_owner = NULL WHERE user_id = %s", (user,))
    reclaimed = _claim(db, user, owner="r2")
    assert _place(db.service_dsn, reclaimed, "b", 10) == ["a"]
    assert db.scalar("SELECT server FROM evolution_instance_creation_queue WHERE user_id = %s",
                     (user,)) == "a"


def test_place_is_fenced_on_the_lease(db: TestDatabase) -> None:
    user = _signup(db)
    stale = _claim(db, user, owner="r1")
    _claim(db, user, owner="r2")  # r1's lease was lost: the token moved on
    assert _place(db.service_dsn, stale, "a", None) == []
    assert _place(db.service_dsn, {**stale, "owner": "r2"}, "a", None) == []
    assert db.scalar("SELECT server FROM evolution_instance_creation_queue WHERE user_id = %s",
                     (user,)) is None


def test_place_refuses_a_full_server_and_leaves_the_entry_unplaced(db: TestDatabase) -> None:
    _instance(db, "a")
    first, second = _signup(db), _signup(db)
    lease = _claim(db, first)
    assert _place(db.service_dsn, lease, "a", 2) == ["a"]  # 1 instance + 0 in flight < 2
    other = _claim(db, second)
    assert _place(db.service_dsn, other, "a", 2) == [None]  # 1 + 1 in flight = 2: full
    assert db.scalar("SELECT server FROM evolution_instance_creation_queue WHERE user_id = %s",
                     (second,)) is None
    assert _place(db.service_dsn, other, "b", 2) == ["b"]


def test_concurrent_placements_on_a_bounded_server_wait_for_each_other(
    db: TestDatabase,
) -> None:
    first, second = _claim(db, _signup(db)), _claim(db, _signup(db))
    outcome: list[list[object]] = []
    with psycopg.connect(db.service_dsn) as holder:
        holder.execute(queries.PLACE_LOCK, {"server": "a"})
        assert [r[0] for r in holder.execute(
            queries.PLACE, {**first, "server": "a", "capacity": 1}).fetchall()] == ["a"]
        racer = threading.Thread(
            target=lambda: outcome.append(_place(db.service_dsn, second, "a", 1)), daemon=True)
        racer.start()
        time.sleep(0.5)
        assert racer.is_alive() and outcome == [], "the second placement must wait for the lock"
        holder.commit()
    racer.join(timeout=10)
    assert outcome == [[None]], "after the first commits, the server is seen full"


def test_the_migration_adds_the_column_to_the_deletion_queue_when_it_exists(
    db: TestDatabase,
) -> None:
    if db.scalar("SELECT to_regclass('public.evolution_instance_deletion_queue')") is None:
        db.query("CREATE TABLE public.evolution_instance_deletion_queue "
                 "(id bigint PRIMARY KEY, user_id uuid NOT NULL, instance_name text)")
    (servers_sql,) = [m.sql for m in load_migrations() if m.name == "servers"]
    db.query(servers_sql)  # idempotent: a second application changes nothing else
    assert db.scalar(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'evolution_instance_deletion_queue' AND column_name = 'server'"
    ) == "text"


def test_place_keeps_the_server_of_an_instance_the_user_already_has(db: TestDatabase) -> None:
    # A completed entry of the single-server era (row server NULL), retried by hand: its
    # instance lives on `default`, so placement answers `default`, never a second instance.
    user = _instance(db, "b")
    db.query("UPDATE evolution_instance_creation_queue SET status = 'pending', server = NULL "
             "WHERE user_id = %s", (user,))
    lease = _claim(db, user)
    assert _place(db.service_dsn, lease, "a", 1) == ["b"]
    assert db.scalar("SELECT server FROM evolution_instance_creation_queue WHERE user_id = %s",
                     (user,)) == "b"


def test_completion_records_the_placed_server_on_the_instance(db: TestDatabase) -> None:
    placed, unplaced = _signup(db), _signup(db)
    leases = [_claim(db, placed), _claim(db, unplaced)]
    assert _place(db.service_dsn, leases[0], "b", None) == ["b"]
    with psycopg.connect(db.service_dsn, autocommit=True) as conn:
        rows = conn.execute(queries.COMPLETE_MANY, {
            "owner": "r1", "ids": [lease["id"] for lease in leases],
            "claim_seqs": [lease["claim_seq"] for lease in leases],
            "instance_names": [f"evo-{placed}", f"evo-{unplaced}"],
            "instance_ids": [None, None], "integrations": ["WHATSAPP-BAILEYS"] * 2,
            "tokens": [None, None], "webhook_url": "https://x.test/hook",
            "webhook_events": ["MESSAGES_UPSERT"]}).fetchall()
    assert len(rows) == 2
    servers = dict(db.query("SELECT user_id, server FROM evolution_instances"))
    assert servers == {placed: "b", unplaced: "default"}
