"""The operator's road, as commands in their own processes: migrate refuses a transaction
pooler, --env-file stands in for the environment, the deployment files come from the
installed package, and every metric the dashboard and the alert rules name is one a running
service exports."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.dev.simulator import SimulatorThread
from tests.e2e.cli_helpers import (
    ROOT,
    add_fault,
    cli_command,
    cli_environment,
    env_for,
    insert_profiles,
    instance_name,
    parse_metrics,
    run_cli,
    simulator_thread,
    wait_for,
)
from tests.harness import ServiceProcess, queue_rows, signup
from tests.monitoring_names import SYNTHETIC, dashboard_exprs, metric_names, rule_exprs
from tests.pg import TestDatabase


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with simulator_thread() as thread:
        yield thread


@pytest.mark.parametrize("dsn", [
    "postgresql://postgres.ref:s3cret-pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres",
    "postgresql://postgres:s3cret-pw@127.0.0.1:5432/postgres?pgbouncer=true",
])
def test_migrate_refuses_a_transaction_pooler_with_exit_78(dsn: str) -> None:
    result = run_cli("migrate", env={"DATABASE_URL": dsn})
    assert result.code == 78, str(result)
    assert len(result.err_lines) == 1 and "transaction-mode pooler" in result.stderr, str(result)
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert result.elapsed_s < 10   # refused before any connection attempt


def _write_env_file(path: Path, env: dict[str, str]) -> Path:
    path.write_text("# as /etc/evolution-listener/evolution-listener.env\n"
                    + "".join(f"{k}={v}\n" for k, v in env.items()))
    path.chmod(0o600)
    return path


def test_env_file_gives_every_subcommand_its_settings(db: TestDatabase, sim: SimulatorThread,
                                                      tmp_path: Path) -> None:
    env_file = _write_env_file(tmp_path / "listener.env", env_for(db.service_dsn, sim))
    signup(db.dsn, 2)
    stats = run_cli("stats", "--json", "--env-file", str(env_file), env={})
    assert stats.code == 0, str(stats)
    assert "pending" in stats.stdout
    drain = run_cli("drain", "--env-file", str(env_file), env={})
    assert drain.code == 0 and "completed=2" in drain.stdout, str(drain)
    doctor = run_cli("doctor", "--env-file", str(env_file), env={})
    assert doctor.code == 0, str(doctor)
    assert "connection budget" in doctor.stdout
    # Without it, the same command has no configuration.
    assert run_cli("stats", env={}).code == 78


@pytest.mark.parametrize("command", [("stats",), ("run",), ("migrate",), ("doctor",),
                                     ("simulator",)])
def test_missing_env_file_is_one_line_and_exit_78(command: tuple[str, ...],
                                                  tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.env"
    result = run_cli(*command, "--env-file", str(missing), env={})
    assert result.code == 78, str(result)
    assert result.err_lines == [f"evolution-listener: --env-file {missing}: cannot read it "
                                "(No such file or directory)"], str(result)


def test_ctrl_c_on_an_operator_command_exits_130(db: TestDatabase, sim: SimulatorThread) -> None:
    # The Evolution API never answers: doctor waits there, and the operator presses Ctrl-C.
    add_fault(sim, kind="hang", operation="root", times=None)
    proc = subprocess.Popen(cli_command(["doctor"]), env=cli_environment(env_for(db.service_dsn,
                            sim)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "LISTEN/NOTIFY" in line or not line:
                break
        assert "LISTEN/NOTIFY" in seen[-1], seen
        time.sleep(0.3)   # now inside the Evolution API check
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_install_files_prints_and_writes_the_shipped_files(tmp_path: Path) -> None:
    unit = run_cli("install-files", "--print", "unit", env={})
    assert unit.code == 0
    assert unit.stdout == (ROOT / "deploy" / "evolution-listener.service").read_text()
    written = run_cli("install-files", "--write", str(tmp_path), env={})
    assert written.code == 0, str(written)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README-ops.md", "evolution-listener.env.example", "evolution-listener.json",
        "evolution-listener.rules.yml", "evolution-listener.service"]
    # An operator's edited copy is kept unless --force.
    (tmp_path / "evolution-listener.service").write_text("edited\n")
    again = run_cli("install-files", "--write", str(tmp_path), env={})
    assert again.code == 1 and "kept" in again.stdout
    assert (tmp_path / "evolution-listener.service").read_text() == "edited\n"


def test_export_migrations_writes_supabase_names_once(tmp_path: Path) -> None:
    folder = tmp_path / "supabase" / "migrations"
    first = run_cli("export-migrations", str(folder), env={})
    assert first.code == 0, str(first)
    names = sorted(p.name for p in folder.iterdir())
    assert [n.split("_", 1)[1] for n in names] == [
        f"evolution_listener_{p.name}" for p in sorted((ROOT / "sql").glob("*.sql"))]
    assert all(len(n.split("_", 1)[0]) == 14 for n in names)
    second = run_cli("export-migrations", str(folder), env={})
    assert second.code == 0 and "nothing to write" in second.stdout
    assert sorted(p.name for p in folder.iterdir()) == names


def test_every_metric_the_dashboard_and_rules_name_is_in_a_real_scrape(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    named = metric_names(dashboard_exprs() + rule_exprs()) - SYNTHETIC
    service = ServiceProcess(env_for(db.service_dsn, sim, LISTENER_SWEEP_INTERVAL_S=3600))
    try:
        service.wait_ready()
        users = [uuid.uuid4() for _ in range(3)]
        # One server error, so the error series exist as they would in production.
        add_fault(sim, operation="create_instance", instance=instance_name(users[0]),
                  status=500, times=1)
        insert_profiles(db.dsn, users)
        wait_for(lambda: all(r["status"] == "completed" for r in queue_rows(db.dsn).values())
                 and len(queue_rows(db.dsn)) == 3, 15, what="3 signups completed")
        scraped = {name for name, _ in parse_metrics(service.metrics())}
    finally:
        assert service.stop() == 0
    # One server without a capacity (no servers file): server_capacity has no sample.
    fleet_only = {"evolution_listener_server_capacity"}
    assert named - fleet_only <= scraped, f"named but not exported: {sorted(named - scraped)}"
    assert "process_resident_memory_bytes" in scraped
    assert not [n for n in scraped if n.startswith("evolution_listener_process_")]
