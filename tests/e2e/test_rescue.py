"""A dead replica's work is rescued in seconds, not after its lease (SPEC §4), with the
service as its own process: SIGKILL, and a replica cut off from its liveness lock whose
process lives on (its late writes must land nowhere)."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from listener.dev.simulator import SimulatorOptions, SimulatorThread
from tests.harness import (
    ServiceProcess,
    instance_rows,
    queue_rows,
    service_env,
    signup,
    wait_until_sync,
)
from tests.pg import TestDatabase, with_database

LEASE_S = 60  # far beyond every bound below: a rescue that waited for it fails the test
CALL_LATENCY_MS = 1000  # two API calls per entry: each entry is in flight for about 2 s


@pytest.fixture
def sim_thread() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorOptions(seed=13, latency_ms=CALL_LATENCY_MS)) as thread:
        yield thread


def _replica(dsn: str, sim: SimulatorThread) -> ServiceProcess:
    return ServiceProcess(service_env(
        dsn, sim.base_url, sim.api_key, LISTENER_CONCURRENCY=16, LISTENER_LEASE_S=LEASE_S,
        LISTENER_HTTP_TIMEOUT_S=10, LISTENER_SWEEP_INTERVAL_S=3600))


def _held_by(db: TestDatabase, proc: ServiceProcess) -> set[uuid.UUID]:
    """Users whose row the process holds (its owner id is host:pid:suffix)."""
    marker = f":{proc.proc.pid}:"
    return {user for user, row in queue_rows(db.dsn).items()
            if row["status"] == "processing" and marker in (row["lease_owner"] or "")}


def _completed(db: TestDatabase, users: set[uuid.UUID] | list[uuid.UUID]) -> bool:
    rows = queue_rows(db.dsn)
    return all(rows[u]["status"] == "completed" for u in users)


def _rescued_total(proc: ServiceProcess) -> float:
    found = re.search(r'^evolution_listener_rescued_total\{kind="creation"\} (\S+)$',
                      proc.metrics(), re.M)
    assert found is not None
    return float(found.group(1))


def _assert_each_user_once(db: TestDatabase, sim: SimulatorThread, users: list[uuid.UUID],
                           rescued: set[uuid.UUID]) -> None:
    rows = queue_rows(db.dsn)
    assert {rows[u]["status"] for u in users} == {"completed"}
    assert set(instance_rows(db.dsn)) == set(users)
    created = Counter(r.instance for r in sim.simulator.requests
                      if r.operation == "create_instance" and r.status == 201)
    assert set(created) == {f"evo-{u}" for u in users} and set(created.values()) == {1}
    # A rescued row was claimed twice (once by the lost owner), every other row once.
    for user in users:
        expected = (2, 1) if user in rescued else (1, 0)
        assert (rows[user]["attempts"], rows[user]["reclaim_count"]) == expected, user


def test_a_sigkilled_replicas_entries_are_completed_by_another_within_seconds(
    db: TestDatabase, sim_thread: SimulatorThread
) -> None:
    first, second = _replica(db.service_dsn, sim_thread), _replica(db.service_dsn, sim_thread)
    victim, survivor = first, second
    try:
        first.wait_ready()
        second.wait_ready()
        users = signup(db.dsn, 12)
        # Both race for the rows (one may take all 12): once every row is held, the victim
        # is the replica holding more, so the survivor has free slots for all it rescues.
        wait_until_sync(lambda: len(_held_by(db, first) | _held_by(db, second)) == 12,
                        timeout_s=5, interval_s=0.02)
        if len(_held_by(db, second)) > len(_held_by(db, first)):
            victim, survivor = second, first
        held = _held_by(db, victim)
        assert len(held) >= 6, len(held)
        victim.kill()
        killed_at = time.monotonic()
        wait_until_sync(lambda: _completed(db, held), timeout_s=LEASE_S / 4, interval_s=0.05)
        recovered_in = time.monotonic() - killed_at
        wait_until_sync(lambda: _completed(db, users), timeout_s=10, interval_s=0.1)
        assert _rescued_total(survivor) == len(held)
    finally:
        victim.close()
        assert survivor.stop() == 0
    # One rescue period (~1 s) plus one entry's two calls (~2 s), far below the lease.
    assert recovered_in < 5, recovered_in
    _assert_each_user_once(db, sim_thread, users, held)
    assert "rescued a dead replica's entries" in survivor.output


@pytest.fixture
def cut_role(db: TestDatabase) -> Iterator[str]:
    """A login role of its own (member of evolution_listener, like the service's) for the
    replica to cut off: its sessions can be found, and refused new ones, without touching
    the other replica's."""
    role = f"el_cut_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db.server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'cut-pw' IN ROLE evolution_listener")
    try:
        yield role
    finally:
        with psycopg.connect(db.server.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %s", (role,))
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def _cut_lock_session(db: TestDatabase, role: str) -> int:
    """Refuse the role new sessions, then end its LISTEN (liveness lock) session only: its
    pool keeps the connections it has, so its process still reaches the database."""
    with psycopg.connect(db.server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} NOLOGIN")
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE usename = %s AND application_name = 'evolution-listener:listen'",
            (role,)).fetchall()
    return len(rows)


def test_a_replica_cut_off_from_its_lock_is_rescued_and_its_late_writes_are_fenced(
    db: TestDatabase, sim_thread: SimulatorThread, cut_role: str
) -> None:
    cut_dsn = with_database(db.server.admin_dsn, db.name, cut_role, "cut-pw")
    cut, survivor = _replica(cut_dsn, sim_thread), _replica(db.service_dsn, sim_thread)
    try:
        cut.wait_ready()
        survivor.wait_ready()
        users = signup(db.dsn, 12)
        for _ in range(3):  # the survivor may win the race for every row: queue more
            with contextlib.suppress(AssertionError):
                wait_until_sync(lambda: len(_held_by(db, cut)) >= 2, timeout_s=3,
                                interval_s=0.02)
                break
            users += signup(db.dsn, 12)
        assert len(_held_by(db, cut)) >= 2
        assert _cut_lock_session(db, cut_role) == 1
        held = _held_by(db, cut)
        cut_at = time.monotonic()
        wait_until_sync(lambda: _completed(db, held), timeout_s=LEASE_S / 4, interval_s=0.05)
        recovered_in = time.monotonic() - cut_at
        wait_until_sync(lambda: _completed(db, users), timeout_s=10, interval_s=0.1)
        assert cut.proc.poll() is None  # alive all along
        assert _rescued_total(survivor) == len(held)
        # Its own attempts finished while the survivor held the rows: each wrote nothing.
        wait_until_sync(lambda: cut.output.count("lease lost before completion") == len(held),
                        timeout_s=5)
    finally:
        cut.stop()
        assert survivor.stop() == 0
    assert recovered_in < 5, recovered_in
    _assert_each_user_once(db, sim_thread, users, held)


def test_a_provision_command_holds_a_lock_so_a_replica_does_not_rescue_its_row(
    db: TestDatabase, sim_thread: SimulatorThread
) -> None:
    sim_thread.simulator.options.latency_ms = 3000  # the command holds its row ~6 s
    [user] = signup(db.dsn)  # no replica runs yet: the row waits, pending
    env = service_env(db.service_dsn, sim_thread.base_url, sim_thread.api_key,
                      LISTENER_LEASE_S=LEASE_S, LISTENER_HTTP_TIMEOUT_S=10)
    command = ServiceProcess(env, command=("provision", str(user)))
    replica: ServiceProcess | None = None
    try:
        wait_until_sync(lambda: _held_by(db, command) == {user}, timeout_s=10)
        replica = _replica(db.service_dsn, sim_thread)
        replica.wait_ready()
        time.sleep(2.5)  # two rescue periods and more while the command's calls run
        assert _held_by(db, command) == {user}
        assert command.proc.wait(20) == 0, command.output
        assert _rescued_total(replica) == 0
    finally:
        command.close()
        assert replica is None or replica.stop() == 0
    row = queue_rows(db.dsn)[user]
    assert (row["status"], row["attempts"], row["reclaim_count"]) == ("completed", 1, 0)
