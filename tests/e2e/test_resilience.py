"""The service as its own process, as systemd runs it: crashes, lost connections, a database
restart, SIGTERM during work. Nothing lost, nothing duplicated."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from listener.dev.simulator import Simulator, SimulatorOptions, SimulatorThread
from tests.harness import (
    ServiceProcess,
    instance_rows,
    queue_rows,
    service_env,
    signup,
    wait_until_sync,
)
from tests.pg import TestDatabase


@pytest.fixture
def sim_thread() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorOptions(seed=11)) as thread:
        yield thread


def _env(db: TestDatabase, sim: SimulatorThread, **overrides: object) -> dict[str, str]:
    return service_env(db.service_dsn, sim.base_url, sim.api_key, **overrides)


def _statuses(db: TestDatabase) -> Counter[str]:
    return Counter(r["status"] for r in queue_rows(db.dsn).values())


def _all_completed(db: TestDatabase, users: list[uuid.UUID]) -> bool:
    rows = queue_rows(db.dsn)
    return all(rows.get(u, {}).get("status") == "completed" for u in users)


def _assert_exactly_once(db: TestDatabase, sim: Simulator, users: list[uuid.UUID]) -> None:
    rows = queue_rows(db.dsn)
    assert {rows[u]["status"] for u in users} == {"completed"}
    assert set(instance_rows(db.dsn)) == set(users)
    names = {f"evo-{u}" for u in users}
    assert names <= set(sim.instances)
    created = Counter(r.instance for r in sim.requests
                      if r.operation == "create_instance" and r.status == 201)
    assert all(created[n] <= 1 for n in names), created


def test_sigkill_mid_batch_then_restart_loses_and_duplicates_nothing(
    db: TestDatabase, sim_thread: SimulatorThread
) -> None:
    sim = sim_thread.simulator
    sim.options.latency_ms = 150
    env = _env(db, sim_thread, LISTENER_CONCURRENCY=4, LISTENER_LEASE_S=5,
               LISTENER_HTTP_TIMEOUT_S=2)
    first = ServiceProcess(env)
    first.wait_ready()
    users = signup(db.dsn, 24)
    wait_until_sync(lambda: _statuses(db)["completed"] >= 4, timeout_s=15)
    first.kill()
    killed_at = time.monotonic()
    left = _statuses(db)
    assert left["processing"] > 0, left  # it died holding leases
    second = ServiceProcess(env)
    try:
        second.wait_ready()
        wait_until_sync(lambda: _all_completed(db, users), timeout_s=30, interval_s=0.1)
        recovered_in = time.monotonic() - killed_at
    finally:
        assert second.stop() == 0
    _assert_exactly_once(db, sim, users)
    # A crash delays its rows by at most the lease plus a few seconds.
    assert recovered_in < 5 + 10
    assert '"reclaimed an expired lease"' in second.output or "reclaimed" in second.output


def _terminate_service_backends(db: TestDatabase) -> int:
    with psycopg.connect(db.server.admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND usename = 'el_test_service'", (db.name,)
        ).fetchall()
    return len(rows)


def test_terminated_connections_are_reestablished_and_work_resumes(
    db: TestDatabase, sim_thread: SimulatorThread
) -> None:
    env = _env(db, sim_thread, LISTENER_SWEEP_INTERVAL_S=3600)
    service = ServiceProcess(env)
    try:
        service.wait_ready()
        before = signup(db.dsn, 3)
        wait_until_sync(lambda: _all_completed(db, before), timeout_s=10)
        assert _terminate_service_backends(db) >= 1
        # Inserted while cut off: their notifications may be lost; the reconnect sweep finds them.
        during = signup(db.dsn, 3)
        wait_until_sync(lambda: _all_completed(db, during), timeout_s=15, interval_s=0.1)
        after = signup(db.dsn, 3)
        wait_until_sync(lambda: _all_completed(db, after), timeout_s=10)
    finally:
        assert service.stop() == 0
    _assert_exactly_once(db, sim_thread.simulator, before + during + after)
    assert "LISTEN connection lost" in service.output


def test_database_restart_is_survived(
    db: TestDatabase, sim_thread: SimulatorThread
) -> None:
    server = db.server
    if server.embedded is None:
        pytest.skip("restarting PostgreSQL needs the embedded server (not a shared one)")
    env = _env(db, sim_thread, LISTENER_SWEEP_INTERVAL_S=3600)
    service = ServiceProcess(env)
    try:
        service.wait_ready()
        server.embedded.restart(down_for_s=1.0)
        during = signup(db.dsn, 5)
        wait_until_sync(lambda: _all_completed(db, during), timeout_s=30, interval_s=0.2)
        wait_until_sync(lambda: service.readyz()[0] == 200, timeout_s=15)
    finally:
        assert service.stop() == 0
    _assert_exactly_once(db, sim_thread.simulator, during)


def test_sigterm_during_work_exits_0_within_the_bound_and_releases_everything(
    db: TestDatabase, sim_thread: SimulatorThread
) -> None:
    sim = sim_thread.simulator
    sim.options.latency_ms = 4000  # every call outlives the grace period
    env = _env(db, sim_thread, LISTENER_CONCURRENCY=4, LISTENER_SHUTDOWN_GRACE_S=1,
               LISTENER_HTTP_TIMEOUT_S=10, LISTENER_LEASE_S=30)
    service = ServiceProcess(env)
    service.wait_ready()
    users = signup(db.dsn, 6)
    wait_until_sync(lambda: _statuses(db)["processing"] == 4, timeout_s=10)
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    code = service.proc.wait(15)
    took = time.monotonic() - started
    service.close()
    assert code == 0
    assert took < 1 + 3, took
    rows = queue_rows(db.dsn)
    assert Counter(rows[u]["status"] for u in users) == {"pending": 6}
    assert all(rows[u]["retry_count"] == 0 and rows[u]["lease_owner"] is None for u in users)
