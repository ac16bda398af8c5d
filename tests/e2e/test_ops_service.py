"""The running service as systemd and Prometheus see it: /readyz, /metrics, sd_notify.

The service is `python -m listener run` in its own process (tests.harness.ServiceProcess),
against a real PostgreSQL and the simulator in a thread of this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.dev.simulator import SimulatorThread
from tests.e2e.cli_helpers import (
    add_fault,
    env_for,
    execute,
    insert_profiles,
    instance_name,
    parse_metrics,
    sample,
    simulator_thread,
    wait_for,
)
from tests.harness import ServiceProcess, queue_rows, signup
from tests.pg import TestDatabase

LISTEN_APP = "evolution-listener:listen"
PREFIX = "evolution_listener_"


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with simulator_thread() as thread:
        yield thread


def _readyz(service: ServiceProcess) -> tuple[int, dict[str, object]]:
    try:
        status, body = service.readyz()
    except OSError as error:
        return 0, {"error": str(error)}
    return status, json.loads(body)


def _listen_pids(db: TestDatabase) -> list[int]:
    rows = execute(db.dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                           "AND datname = current_database()", (LISTEN_APP,))
    return [int(r[0]) for r in rows]


def _completed(db: TestDatabase, count: int) -> bool:
    rows = queue_rows(db.dsn)
    return len(rows) == count and all(r["status"] == "completed" for r in rows.values())


def test_readyz_follows_the_listen_connection_and_metrics_count_what_happened(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    service = ServiceProcess(env_for(db.service_dsn, sim, LISTENER_SWEEP_INTERVAL_S=3600))
    try:
        service.wait_ready()
        assert _readyz(service) == (200, {"ready": True})
        signup(db.dsn, 4)
        wait_for(lambda: _completed(db, 4), 5, what="4 signups completed")

        # Cut the LISTEN connection, and keep it from coming back until we allow it.
        execute(db.dsn, f'REVOKE CONNECT ON DATABASE "{db.name}" FROM PUBLIC')
        [pid] = _listen_pids(db)
        execute(db.dsn, "SELECT pg_terminate_backend(%s)", (pid,))
        took = wait_for(lambda: _readyz(service)[0] == 503, 5, what="/readyz 503")
        assert took < 3.0, f"/readyz noticed the cut after {took:.2f}s"
        time.sleep(0.5)  # reconnect attempts are refused meanwhile: still not ready
        status, body = _readyz(service)
        assert status == 503 and body["ready"] is False, body
        assert "LISTEN connection down" in str(body["reason"]), body
        assert "permission denied" in str(body["reason"]), body
        samples = parse_metrics(service.metrics())
        assert sample(samples, PREFIX + "listen_connected") == 0

        # Signups while disconnected: their notifications are lost; the sweep after the
        # reconnect must find them.
        signup(db.dsn, 2)
        execute(db.dsn, f'GRANT CONNECT ON DATABASE "{db.name}" TO PUBLIC')
        wait_for(lambda: _readyz(service)[0] == 200, 15, what="/readyz 200 after reconnect")
        wait_for(lambda: _completed(db, 6), 5, what="signups made while disconnected")
        assert len(_listen_pids(db)) == 1
        assert pid not in _listen_pids(db)

        samples = parse_metrics(service.metrics())
    finally:
        code = service.stop()
    assert code == 0, service.output[-3000:]

    assert sample(samples, PREFIX + "provisioned_total", outcome="completed") == 6
    for outcome in ("retried", "failed", "released"):
        assert sample(samples, PREFIX + "provisioned_total", outcome=outcome) == 0
    assert sample(samples, PREFIX + "claimed_entries_total") == 6
    assert sample(samples, PREFIX + "sweeps_total") >= 2  # at start and after the reconnect
    assert sample(samples, PREFIX + "listen_reconnects_total") == 1
    assert sample(samples, PREFIX + "listen_connected") == 1
    assert sample(samples, PREFIX + "reclaimed_leases_total") == 0
    assert sample(samples, PREFIX + "backoff_active", server="default") == 0
    assert sample(samples, PREFIX + "provisioning_latency_seconds_count") == 6
    assert sample(samples, PREFIX + "provisioning_latency_seconds_bucket", le="+Inf") == 6
    assert 0 < sample(samples, PREFIX + "provisioning_latency_seconds_sum") < 60
    creates = sample(samples, PREFIX + "evolution_request_duration_seconds_count",
                     operation="create_instance", server="default")
    assert creates == 6
    for queue_status in ("pending", "processing", "completed", "failed"):
        sample(samples, PREFIX + "queue_depth", state=queue_status)  # exported, even at 0
    sample(samples, PREFIX + "oldest_pending_age_seconds")
    errors = [v for (name, _), v in samples.items() if name == PREFIX + "evolution_errors_total"]
    assert sum(errors) == 0
    names = {name for name, _ in samples}
    # Ours, and prometheus-client's standard process collector under its standard names.
    assert all(name.startswith((PREFIX, "process_")) for name in names), sorted(names)
    assert "process_resident_memory_bytes" in names


def test_metrics_count_failures_by_outcome_and_status(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    users = [uuid.uuid4() for _ in range(3)]
    add_fault(sim, operation="create_instance", instance=instance_name(users[0]), status=500,
              times=1)
    add_fault(sim, operation="create_instance", instance=instance_name(users[1]), status=400,
              times=1)
    service = ServiceProcess(env_for(db.service_dsn, sim, LISTENER_SWEEP_INTERVAL_S=3600))
    try:
        service.wait_ready()
        insert_profiles(db.dsn, users)

        def settled() -> bool:
            rows = queue_rows(db.dsn)
            return [rows[u]["status"] for u in users] == ["completed", "failed", "completed"]

        wait_for(settled, 5, what="one retried, one failed, one completed")
        samples = parse_metrics(service.metrics())
    finally:
        code = service.stop()
    assert code == 0, service.output[-3000:]
    assert sample(samples, PREFIX + "provisioned_total", outcome="completed") == 2
    assert sample(samples, PREFIX + "provisioned_total", outcome="retried") == 1
    assert sample(samples, PREFIX + "provisioned_total", outcome="failed") == 1
    assert sample(samples, PREFIX + "claimed_entries_total") == 4
    assert sample(samples, PREFIX + "evolution_errors_total", operation="create_instance",
                  status="500", server="default") == 1
    assert sample(samples, PREFIX + "evolution_errors_total", operation="create_instance",
                  status="400", server="default") == 1


# --- sd_notify -----------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    directory = tempfile.mkdtemp(prefix="el-notify-")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield sock, path
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)
        os.rmdir(directory)


def _receive(sock: socket.socket, until: str, timeout_s: float,
             into: list[tuple[float, str]]) -> None:
    """Collect datagrams (one per message, `KEY=VALUE` lines) until one carries `until`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        into.append((time.monotonic(), data.decode()))
        if until in data.decode().splitlines():
            return
    raise AssertionError(f"no {until} within {timeout_s}s; got {[m for _, m in into]}")


def test_sd_notify_ready_watchdog_stopping_in_order(
    db: TestDatabase, sim: SimulatorThread, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    service = ServiceProcess({**env_for(db.service_dsn, sim),
                              "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    messages: list[tuple[float, str]] = []
    try:
        _receive(sock, "READY=1", 20, messages)
        # READY means serving: LISTEN is up and the first sweep has run.
        assert service.readyz()[0] == 200
        ready_at = messages[-1][0]
        watchdogs = len([m for _, m in messages if "WATCHDOG=1" in m])
        assert watchdogs == 0, messages  # no ping before READY
        _receive(sock, "WATCHDOG=1", 3, messages)
        _receive(sock, "WATCHDOG=1", 3, messages)
        second_ping = messages[-1][0]
        assert second_ping - ready_at < 3.5
        service.signal(signal.SIGTERM)
        _receive(sock, "STOPPING=1", 10, messages)
        code = service.proc.wait(20)
    finally:
        service.close()
    assert code == 0, service.output[-3000:]
    kinds = [line.split("=", 1)[0] for _, m in messages for line in m.splitlines()
             if line in ("READY=1", "WATCHDOG=1", "STOPPING=1")]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING", kinds
    assert kinds.count("READY") == 1 and kinds.count("STOPPING") == 1, kinds
    assert set(kinds[1:-1]) == {"WATCHDOG"} and len(kinds[1:-1]) >= 2, kinds
