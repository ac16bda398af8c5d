"""`evolution-listener` subcommands as an operator runs them: their own process, an explicit
environment, a real PostgreSQL and the Evolution API simulator over real HTTP.

Exit codes (SPEC §5, §6): 0 ok, 1 failure, 2 usage, 78 configuration (one stderr line naming
the variable).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from listener.config import WEBHOOK_EVENTS
from listener.dev.embedded_pg import free_port
from listener.dev.simulator import SimulatorThread
from tests.e2e.cli_helpers import (
    ROOT,
    SEED_FAILED_SQL,
    SEED_STATS_SQL,
    WEBHOOK,
    CliResult,
    add_fault,
    cli_command,
    cli_environment,
    creates,
    env_for,
    execute,
    http,
    insert_profiles,
    instance_name,
    run_cli,
    run_cli_parallel,
    simulator_thread,
    status_of,
    wait_for,
    webhook_of,
)
from tests.harness import ServiceProcess, instance_rows, queue_rows, signup
from tests.pg import SERVICE_LOGIN_PASSWORD, TestDatabase, with_database

SUBCOMMANDS = ("run", "migrate", "drain", "provision", "stats", "retry", "cleanup", "doctor",
               "simulator", "reconcile")
SECRET_KEY = "cli-test-key-0f9e8d7c"


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with simulator_thread() as thread:
        yield thread


def _env(db: TestDatabase, sim: SimulatorThread, **overrides: object) -> dict[str, str]:
    return env_for(db.service_dsn, sim, **overrides)


def _valid_run_env() -> dict[str, str]:
    """A complete, valid configuration whose database is never reached (config fails first)."""
    return {
        "DATABASE_URL": f"postgresql://someone:pw-never-shown@127.0.0.1:{free_port()}/db",
        "EVOLUTION_API_BASE_URL": "http://127.0.0.1:9",
        "EVOLUTION_API_KEY": SECRET_KEY,
        "SUPABASE_URL": "https://project-ref.supabase.co",
        "LISTENER_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }


# --- help, usage, configuration ------------------------------------------------------------


def test_help_on_every_subcommand_exits_0() -> None:
    calls: list[tuple[tuple[str, ...], dict[str, str] | None]] = [
        (("--help",), {}), (("--version",), {}),
        *(((name, "--help"), {}) for name in SUBCOMMANDS),
    ]
    for result in run_cli_parallel(calls):
        assert result.code == 0, str(result)
        assert result.stderr == "", str(result)
        if result.args != ("--version",):
            assert "usage:" in result.stdout, str(result)
        if result.args[0] in SUBCOMMANDS:
            assert f"evolution-listener {result.args[0]}" in result.stdout, str(result)


@pytest.mark.skipif(importlib.util.find_spec("listener.dev.demo") is None,
                    reason="listener/dev/demo/ is not in this checkout yet")
def test_demo_help_exits_0() -> None:
    result = run_cli("demo", "--help", env={})
    assert result.code == 0, str(result)
    assert "usage:" in result.stdout, str(result)


def test_simulator_subcommand_takes_its_own_flags() -> None:
    """`simulator --port N --api-key K` used to be rejected by the top-level parser (exit 2)."""
    port = free_port()
    proc = subprocess.Popen(
        cli_command(["simulator", "--port", str(port), "--api-key", "flag-key"]),
        env=cli_environment({}), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )
    try:
        def up() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return http("GET", f"http://127.0.0.1:{port}/")[0] == 200
            except OSError:
                return False

        wait_for(up, 10, interval_s=0.05, what="simulator up")
        assert proc.poll() is None, proc.communicate(timeout=5)
        status, _ = http("GET", f"http://127.0.0.1:{port}/instance/fetchInstances",
                         headers={"apikey": "flag-key"})
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{port}" in out


USAGE_ERRORS: list[tuple[str, ...]] = [
    (),
    ("retry",),
    ("retry", "not-a-uuid"),
    ("retry", str(uuid.uuid4()), "--all-failed"),
    ("provision",),
    ("provision", "not-a-uuid"),
    ("cleanup", "--older-than", "0"),
    ("cleanup", "--older-than", "abc"),
    ("stats", "--recent", "many"),
]


def test_usage_errors_exit_2_before_reading_the_configuration() -> None:
    """No configuration at all: a usage error must still be reported as one (exit 2)."""
    results = run_cli_parallel([(args, {}) for args in USAGE_ERRORS])
    for result in results:
        assert result.code == 2, str(result)
        assert result.stdout == "", str(result)
        assert result.err_lines, str(result)
        assert "Traceback" not in result.stderr, str(result)
        assert "configuration error" not in result.stderr, str(result)
    by_args = {r.args: r for r in results}
    assert "UUID" in by_args[("retry", "not-a-uuid")].stderr
    assert "USER_ID or --all-failed" in by_args[("retry",)].stderr


CONFIG_ERRORS: list[tuple[tuple[str, ...], dict[str, str | None], str]] = [
    (("run",), {"DATABASE_URL": None}, "DATABASE_URL"),
    (("run",), {"LISTENER_CONCURRENCY": "abc"}, "LISTENER_CONCURRENCY"),
    (("run",), {"EVOLUTION_API_BASE_URL": "ftp://evolution.example"}, "EVOLUTION_API_BASE_URL"),
    (("run",), {"EVOLUTION_API_KEY": "   "}, "EVOLUTION_API_KEY"),
    (("run",), {"EVOLUTION_API_SERVERS": "/nonexistent/servers.toml"},
     "EVOLUTION_API_SERVERS=/nonexistent/servers.toml: cannot read the file"),
    (("run",), {"SUPABASE_URL": None}, "WEBHOOK_URL"),
    (("run",), {"LISTENER_METRICS_ADDR": "nowhere"}, "LISTENER_METRICS_ADDR"),
    (("run",), {"LISTENER_LOG_FORMAT": "xml"}, "LISTENER_LOG_FORMAT"),
    (("run",), {"LISTENER_LEASE_S": "1"}, "LISTENER_LEASE_S"),
    (("run",), {"DATABASE_URL": "postgresql://u:pw-never-shown@db.example.com:6543/postgres"},
     "6543"),
    (("drain",), {"LISTENER_RETRY_BASE_MS": "soon"}, "LISTENER_RETRY_BASE_MS"),
    (("provision", str(uuid.uuid4())), {"EVOLUTION_API_KEY": None}, "EVOLUTION_API_KEY"),
    (("stats",), {"DATABASE_URL": ""}, "DATABASE_URL"),
    (("retry", str(uuid.uuid4())), {"DATABASE_URL": None}, "DATABASE_URL"),
]


def test_configuration_errors_exit_78_with_one_line_naming_the_variable() -> None:
    calls = []
    for args, changes, _ in CONFIG_ERRORS:
        env = _valid_run_env()
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        calls.append((args, env))
    results = run_cli_parallel(calls)
    for result, (_, changes, expected) in zip(results, CONFIG_ERRORS, strict=True):
        context = f"{changes}\n{result}"
        assert result.code == 78, context
        assert len(result.err_lines) == 1, context
        line = result.err_lines[0]
        assert line.startswith("evolution-listener: configuration error"), context
        assert expected in line, context
        assert result.stdout == "", context
        assert SECRET_KEY not in result.stderr and "pw-never-shown" not in result.stderr, context


def test_doctor_with_a_malformed_configuration_exits_78_naming_the_variable() -> None:
    env = _valid_run_env()
    env["LISTENER_CONCURRENCY"] = "abc"
    result = run_cli("doctor", env=env, timeout_s=30)
    assert result.code == 78, str(result)
    fails = [line for line in result.out_lines if line.startswith("fail")]
    assert fails and "LISTENER_CONCURRENCY" in fails[0], str(result)
    assert "pw-never-shown" not in result.stdout + result.stderr, str(result)


def test_unreachable_database_fails_fast_with_one_line() -> None:
    env = {"DATABASE_URL": f"postgresql://someone:pw-never-shown@127.0.0.1:{free_port()}/db"}
    results = run_cli_parallel([(("stats",), env), (("migrate",), env)])
    for result in results:
        assert result.code == 1, str(result)
        assert len(result.err_lines) == 1, str(result)
        assert "refused" in result.stderr.lower(), str(result)
        assert "pw-never-shown" not in result.stderr, str(result)
        assert result.elapsed_s < 10, str(result)


# --- migrate ---------------------------------------------------------------------------------


def test_migrate_applies_then_is_a_no_op(db: TestDatabase) -> None:
    admin = db.server.admin_dsn
    name = f"el_e2e_fresh_{uuid.uuid4().hex[:8]}"
    execute(admin, f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(admin, name)
        first = run_cli("migrate", env={"DATABASE_URL": dsn})
        assert first.code == 0, str(first)
        applied = [line for line in first.out_lines if line.startswith("applied")]
        assert len(applied) >= 2 and "0001_queue_and_instances" in applied[0], str(first)
        second = run_cli("migrate", env={"DATABASE_URL": dsn})
        assert second.code == 0, str(second)
        assert second.out_lines == [f"up to date ({len(applied)} migrations applied)"], \
            str(second)
        triggers = execute(dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = "
                                "'on_profile_created_create_evolution_instance'")
        assert triggers == [(1,)]

        # The service's own role may not migrate: a clear refusal, not "cannot reach".
        refused = run_cli("migrate", env={"DATABASE_URL": db.service_dsn})
        assert refused.code == 1, str(refused)
        assert len(refused.err_lines) == 1, str(refused)
        assert "permission denied" in refused.stderr, str(refused)
        assert "cannot reach" not in refused.stderr, str(refused)
        assert "owner" in refused.stderr and SERVICE_LOGIN_PASSWORD not in refused.stderr
    finally:
        execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- drain -----------------------------------------------------------------------------------


def test_drain_processes_every_due_entry_once_and_reports_counts(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    ok1, ok2, bad, flaky = (uuid.uuid4() for _ in range(4))
    add_fault(sim, operation="create_instance", instance=instance_name(bad), status=400,
              message=["name is not allowed"], times=None)
    add_fault(sim, operation="create_instance", instance=instance_name(flaky), status=500,
              times=1)
    insert_profiles(db.dsn, [ok1, ok2, bad, flaky])
    env = _env(db, sim, LISTENER_RETRY_BASE_MS=600_000)

    result = run_cli("drain", env=env)
    assert result.code == 1, str(result)  # one entry failed for good
    assert result.out_lines == ["completed=2 retried=1 failed=1 released=0"], str(result)

    rows = queue_rows(db.dsn)
    assert rows[ok1]["status"] == rows[ok2]["status"] == "completed"
    assert rows[bad]["status"] == "failed" and rows[bad]["retry_count"] == 0
    assert "400" in rows[bad]["error_message"] or "not allowed" in rows[bad]["error_message"]
    assert rows[flaky]["status"] == "pending" and rows[flaky]["retry_count"] == 1
    assert rows[flaky]["error_message"]
    assert set(instance_rows(db.dsn)) == {ok1, ok2}
    assert creates(sim, instance_name(ok1)) == creates(sim, instance_name(ok2)) == 1

    again = run_cli("drain", env=env)  # the retry is not due for ten minutes
    assert again.code == 0, str(again)
    assert again.out_lines == ["completed=0 retried=0 failed=0 released=0"], str(again)


def test_drain_with_a_rejected_key_stops_early_and_spends_no_retry(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    users = signup(db.dsn, 2)
    env = _env(db, sim, EVOLUTION_API_KEY="not-the-key")
    result = run_cli("drain", env=env)
    assert result.code == 1, str(result)
    assert any("drain stopped early" in line for line in result.err_lines), str(result)
    rows = queue_rows(db.dsn)
    for user in users:
        assert rows[user]["status"] == "pending", rows[user]
        assert rows[user]["retry_count"] == 0, rows[user]
    assert "not-the-key" not in result.stdout + result.stderr


# --- provision -------------------------------------------------------------------------------


def _assert_webhook_is_ours(sim: SimulatorThread, name: str) -> None:
    hook = webhook_of(sim, name)
    assert hook is not None
    assert hook["url"] == WEBHOOK, hook
    assert hook["enabled"] is True, hook
    assert sorted(hook["events"]) == sorted(WEBHOOK_EVENTS), hook
    assert len(hook["events"]) == 5, hook
    assert hook["webhookByEvents"] is False and hook["webhookBase64"] is False, hook


def test_provision_then_force_restores_a_changed_webhook(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    [user] = signup(db.dsn)
    name = instance_name(user)
    env = _env(db, sim)

    first = run_cli("provision", str(user), env=env)
    assert first.code == 0, str(first)
    steps = [line.split(":", 1)[0] for line in first.out_lines]
    assert steps == ["claimed", "created", "webhook", "status"], str(first)
    assert first.out_lines[-1] == "status: completed", str(first)
    _assert_webhook_is_ours(sim, name)
    token = instance_rows(db.dsn)[user]["instance_token"]
    assert token and token not in first.stdout + first.stderr

    again = run_cli("provision", str(user), env=env)
    assert again.code == 0, str(again)
    assert "already completed" in again.stdout and "--force" in again.stdout, str(again)

    # Someone changes the instance's webhook at the Evolution API.
    status, body = http("POST", f"{sim.base_url}/webhook/set/{name}",
                        {"webhook": {"enabled": True, "url": "https://elsewhere.example/hook",
                                     "events": ["QRCODE_UPDATED"]}},
                        headers={"apikey": sim.api_key})
    assert status == 201, body
    changed = webhook_of(sim, name)
    assert changed is not None and changed["url"] == "https://elsewhere.example/hook"

    forced = run_cli("provision", str(user), "--force", env=env)
    assert forced.code == 0, str(forced)
    steps = [line.split(":", 1)[0] for line in forced.out_lines]
    assert steps == ["claimed", "adopted", "webhook", "status"], str(forced)
    assert forced.out_lines[-1] == "status: completed", str(forced)
    _assert_webhook_is_ours(sim, name)
    assert creates(sim, name) == 1  # adopted, never a second instance

    row = queue_rows(db.dsn)[user]
    assert row["status"] == "completed" and row["processed_at"] is not None
    assert row["error_message"] is None and row["retry_count"] == 0
    instance = instance_rows(db.dsn)[user]
    assert instance["instance_name"] == name
    assert instance["webhook_url"] == WEBHOOK
    assert instance["webhook_events"] == list(WEBHOOK_EVENTS)
    assert instance["instance_token"] == token


def test_provision_queues_an_unknown_user_and_exits_1_on_a_failure(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    new_user = uuid.uuid4()  # no profile, no queue entry
    [rejected] = signup(db.dsn)
    add_fault(sim, operation="create_instance", instance=instance_name(rejected), status=400,
              message=["instance name is invalid"], times=None)
    env = _env(db, sim)
    queued, failed = run_cli_parallel([(("provision", str(new_user)), env),
                                       (("provision", str(rejected)), env)])

    assert queued.code == 0, str(queued)
    assert queued.out_lines[0] == f"queued: user {new_user}", str(queued)
    assert queued.out_lines[-1] == "status: completed", str(queued)
    assert status_of(db.dsn, new_user) == "completed"

    assert failed.code == 1, str(failed)
    assert failed.out_lines[-1].startswith("status: failed ("), str(failed)
    assert "invalid" in failed.out_lines[-1], str(failed)
    assert status_of(db.dsn, rejected) == "failed"
    assert set(instance_rows(db.dsn)) == {new_user}


# --- stats -----------------------------------------------------------------------------------


def _mixed_queue(dsn: str) -> dict[str, list[uuid.UUID]]:
    groups = {"completed": [uuid.uuid4() for _ in range(3)],
              "failed": [uuid.uuid4() for _ in range(2)],
              "processing": [uuid.uuid4()],
              "pending": [uuid.uuid4() for _ in range(3)]}
    insert_profiles(dsn, [u for users in groups.values() for u in users])
    q = "UPDATE evolution_instance_creation_queue SET "
    for user, retries in zip(groups["completed"], (0, 1, 2), strict=True):
        execute(dsn, q + "status = 'completed', retry_count = %s, processed_at = now() "
                "WHERE user_id = %s", (retries, user))
    for user, age in zip(groups["failed"], (60, 30), strict=True):
        execute(dsn, q + "status = 'failed', retry_count = 3, processed_at = now(), "
                "error_message = %s, created_at = now() - make_interval(mins => %s) "
                "WHERE user_id = %s", (f"HTTP 500 for {user}", age, user))
    execute(dsn, q + "status = 'processing', retry_count = 1, lease_owner = 'x', "
            "lease_expires_at = now() + interval '1 hour', "
            "next_attempt_at = now() + interval '1 hour' WHERE user_id = %s",
            (groups["processing"][0],))
    execute(dsn, q + "retry_count = 2, created_at = now() - interval '5 minutes', "
            "next_attempt_at = now() + interval '1 hour' WHERE user_id = %s",
            (groups["pending"][0],))
    return groups


def test_stats_matches_the_seed_monitoring_sql(db: TestDatabase) -> None:
    env = {"DATABASE_URL": db.service_dsn}
    empty_text, empty_json = run_cli_parallel([(("stats",), env), (("stats", "--json"), env)])
    assert empty_text.code == 0 and empty_json.code == 0, f"{empty_text}\n{empty_json}"
    assert "(queue is empty)" in empty_text.out_lines, str(empty_text)
    assert "oldest pending: none" in empty_text.out_lines, str(empty_text)
    assert json.loads(empty_json.stdout) == {"by_status": {}, "oldest_pending_age_s": None,
                                             "recent_failures": [], "deletions": {},
                                             "servers": {}}

    groups = _mixed_queue(db.dsn)
    pending = groups["pending"][1]
    as_json, text, retried = run_cli_parallel([
        (("stats", "--json"), env), (("stats",), env), (("retry", str(pending)), env)])
    # retry only resets failed or completed entries: a pending one is left alone
    assert retried.code == 1 and "no failed or completed entry" in retried.stderr, str(retried)
    assert status_of(db.dsn, pending) == "pending"

    assert as_json.code == 0, str(as_json)
    figures = json.loads(as_json.stdout)
    seed = {str(status): (int(count), float(avg or 0))
            for status, count, avg in execute(db.dsn, SEED_STATS_SQL)}
    assert set(figures["by_status"]) == set(seed) == set(groups)
    for status, (count, avg) in seed.items():
        assert figures["by_status"][status]["count"] == count, status
        assert figures["by_status"][status]["avg_retries"] == pytest.approx(avg, abs=1e-3)
    assert figures["by_status"]["pending"]["avg_retries"] == pytest.approx(2 / 3, abs=1e-3)
    assert figures["oldest_pending_age_s"] == pytest.approx(300, abs=30)
    seed_failed = [str(row[1]) for row in execute(db.dsn, SEED_FAILED_SQL)]
    assert [f["user_id"] for f in figures["recent_failures"]] == seed_failed
    assert seed_failed == [str(groups["failed"][1]), str(groups["failed"][0])]
    assert figures["recent_failures"][0]["error_message"] == f"HTTP 500 for {groups['failed'][1]}"
    assert figures["recent_failures"][0]["retry_count"] == 3

    assert text.code == 0, str(text)
    table = {line.split()[0]: line.split()[1:] for line in text.out_lines[1:5]}
    assert text.out_lines[0].split() == ["status", "count", "avg_retries"], str(text)
    for status, (count, avg) in seed.items():
        assert table[status] == [str(count), f"{avg:.2f}"], str(text)
    assert any(line.startswith("oldest pending: 3") and line.endswith(" s")
               for line in text.out_lines), str(text)
    assert "recent failures:" in text.out_lines, str(text)
    assert f"HTTP 500 for {groups['failed'][0]}" in text.stdout


# --- retry -----------------------------------------------------------------------------------


def _wait_status(db: TestDatabase, user: uuid.UUID, status: str, timeout_s: float) -> float:
    return wait_for(lambda: status_of(db.dsn, user) == status, timeout_s,
                    what=f"{user} {status}")


def test_retry_wakes_a_running_service_within_a_second(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    first, second, third = (uuid.uuid4() for _ in range(3))
    for user in (first, second, third):
        add_fault(sim, operation="create_instance", instance=instance_name(user), status=400,
                  times=1)
    env = _env(db, sim, LISTENER_SWEEP_INTERVAL_S=3600)
    cli_env = {"DATABASE_URL": db.service_dsn}
    service = ServiceProcess(env)
    try:
        service.wait_ready()
        insert_profiles(db.dsn, [first, second, third])
        for user in (first, second, third):
            _wait_status(db, user, "failed", 5)

        result = run_cli("retry", str(first), env=cli_env)
        assert result.code == 0, str(result)
        assert result.out_lines == [f"user {first}: failed -> pending (the listener is notified)"]
        took = _wait_status(db, first, "completed", 3)
        assert took < 1.0, f"retry picked up after {took:.2f}s"

        result = run_cli("retry", "--all-failed", env=cli_env)
        assert result.code == 0, str(result)
        assert result.out_lines == ["reset 2 failed entries to pending"], str(result)
        took = max(_wait_status(db, second, "completed", 3),
                   _wait_status(db, third, "completed", 3))
        assert took < 1.0, f"retry --all-failed picked up after {took:.2f}s"

        # The seed's manual retry of a completed user: re-adopted, never a second instance.
        result = run_cli("retry", str(first), env=cli_env)
        assert result.code == 0, str(result)
        assert "completed -> pending" in result.stdout, str(result)
        wait_for(lambda: queue_rows(db.dsn)[first]["processed_at"] is not None, 3,
                 what="re-adopted")
        assert status_of(db.dsn, first) == "completed"
        assert creates(sim, instance_name(first)) == 1

        unknown = run_cli("retry", str(uuid.uuid4()), env=cli_env)
        assert unknown.code == 1, str(unknown)
        assert "no failed or completed entry" in unknown.stderr, str(unknown)
    finally:
        code = service.stop()
    assert code == 0, service.output[-3000:]
    rows = queue_rows(db.dsn)
    assert all(rows[u]["retry_count"] == 0 for u in (first, second, third))


# --- cleanup ---------------------------------------------------------------------------------


def test_cleanup_deletes_only_old_completed_entries(db: TestDatabase) -> None:
    ages = {"c40": 40, "c35": 35, "c31": 31, "c5": 5, "c0": 0}
    users = {label: uuid.uuid4() for label in [*ages, "f40", "p40", "proc"]}
    insert_profiles(db.dsn, users.values())
    q = "UPDATE evolution_instance_creation_queue SET "
    for label, days in ages.items():
        execute(db.dsn, q + "status = 'completed', processed_at = now() - "
                "make_interval(days => %s), created_at = now() - make_interval(days => %s) "
                "WHERE user_id = %s", (days, days + 1, users[label]))
        execute(db.dsn, "INSERT INTO evolution_instances (user_id, instance_name) "
                "VALUES (%s, %s)", (users[label], instance_name(users[label])))
    execute(db.dsn, q + "status = 'failed', processed_at = now() - interval '40 days', "
            "created_at = now() - interval '41 days' WHERE user_id = %s", (users["f40"],))
    execute(db.dsn, q + "created_at = now() - interval '40 days', next_attempt_at = now() + "
            "interval '1 hour' WHERE user_id = %s", (users["p40"],))
    execute(db.dsn, q + "status = 'processing', created_at = now() - interval '40 days', "
            "lease_owner = 'x', lease_expires_at = now() + interval '1 hour', next_attempt_at "
            "= now() + interval '1 hour' WHERE user_id = %s", (users["proc"],))
    env = {"DATABASE_URL": db.service_dsn}

    def remaining() -> set[str]:
        left = set(queue_rows(db.dsn))
        return {label for label, user in users.items() if user in left}

    result = run_cli("cleanup", "--batch-size", "2", env=env)
    assert result.code == 0, str(result)
    assert result.out_lines == ["deleted 3 completed entries older than 30 days"], str(result)
    assert remaining() == {"c5", "c0", "f40", "p40", "proc"}

    result = run_cli("cleanup", "--older-than", "3", env=env)
    assert result.code == 0, str(result)
    assert result.out_lines == ["deleted 1 completed entries older than 3 days"], str(result)
    assert remaining() == {"c0", "f40", "p40", "proc"}

    result = run_cli("cleanup", env=env)
    assert result.code == 0 and result.out_lines == [
        "deleted 0 completed entries older than 30 days"], str(result)
    assert len(instance_rows(db.dsn)) == len(ages)  # the instances themselves are kept


# --- doctor ----------------------------------------------------------------------------------


def _checks(result: CliResult) -> dict[str, tuple[str, str]]:
    checks = {}
    for line in result.out_lines:
        level, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        checks[name] = (level, detail)
    return checks


DOCTOR_CHECKS = {"config", "not a transaction pooler", "connection kind", "connection budget",
                 "database reachable",
                 "migrations current", "signup trigger", "LISTEN/NOTIFY",
                 "Evolution API reachable", "Evolution API key", "webhook URL"}


def _with_port(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo, _, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.hostname}:{port}"))


def _failing(result: CliResult) -> set[str]:
    return {name for name, (level, _) in _checks(result).items() if level == "fail"}


def test_doctor_all_ok_then_each_failure_named(db: TestDatabase, sim: SimulatorThread) -> None:
    env = _env(db, sim, WEBHOOK_AUTHORIZATION="Bearer doctor-secret-jwt")
    healthy = run_cli("doctor", env=env)
    assert healthy.code == 0, str(healthy)
    checks = _checks(healthy)
    assert set(checks) == DOCTOR_CHECKS, str(healthy)
    assert all(level == "ok" for level, _ in checks.values()), str(healthy)
    assert healthy.stderr == "", str(healthy)

    pooler_dsn = _with_port(db.service_dsn, 6543)
    cases = {
        "wrong key": (env | {"EVOLUTION_API_KEY": "wrong-doctor-key"}, 1,
                      {"Evolution API key": "401"}),
        "unreachable": (env | {"EVOLUTION_API_BASE_URL": f"http://127.0.0.1:{free_port()}"},
                        1, {"Evolution API reachable": "EVOLUTION_API_BASE_URL"}),
        "pooler": (env | {"DATABASE_URL": pooler_dsn}, 78,
                   {"config": "6543", "not a transaction pooler": "6543"}),
    }
    results = run_cli_parallel([(("doctor",), case[0]) for case in cases.values()])

    execute(db.dsn, "DROP TRIGGER on_profile_created_create_evolution_instance ON profiles")
    cases["no trigger"] = (env, 1, {"signup trigger": "is missing"})
    results.append(run_cli("doctor", env=env))

    for (label, (_, code, named)), result in zip(cases.items(), results, strict=True):
        context = f"{label}\n{result}"
        assert result.code == code, context
        assert _failing(result) == set(named), context
        checks = _checks(result)
        for check, words in named.items():
            assert words in checks[check][1], context
        printed = result.stdout + result.stderr
        for secret in ("wrong-doctor-key", "doctor-secret-jwt", sim.api_key,
                       SERVICE_LOGIN_PASSWORD):
            assert secret not in printed, context
