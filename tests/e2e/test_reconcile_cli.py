"""`evolution-listener reconcile` as an operator runs it (its own process, an explicit
environment, a real PostgreSQL, the simulator over HTTP): exit codes, --json keys, the
backfill of a live product in one command, no token in any output; `stats` counts
deletions apart."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from listener.dev.simulator import SimulatorThread
from listener.lifecycle.reconcile import DRIFT_KINDS
from tests.e2e.cli_helpers import (
    Transcript,
    env_for,
    http,
    instance_name,
    instance_tokens,
    run_cli,
    sim_call,
    simulator_thread,
)
from tests.pg import SERVICE_LOGIN_PASSWORD, TestDatabase


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with simulator_thread() as thread:
        yield thread


def _before_the_trigger(dsn: str, users: list[uuid.UUID]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for user in users:
            conn.execute("INSERT INTO profiles (id) VALUES (%s)", (user,))


def test_reconcile_reports_repairs_and_never_prints_a_token(
    db: TestDatabase, sim: SimulatorThread
) -> None:
    env = env_for(db.service_dsn, sim)
    transcript = Transcript()

    clean = run_cli("reconcile", env=env, transcript=transcript)
    assert clean.code == 0, str(clean)
    assert "counts: " + " ".join(f"{k}=0" for k in DRIFT_KINDS) in clean.out_lines, str(clean)

    users = [uuid.uuid4(), uuid.uuid4()]
    _before_the_trigger(db.dsn, users)
    stranger = uuid.uuid4()
    status, _ = http("POST", f"{sim.base_url}/instance/create",
                     {"instanceName": instance_name(stranger), "integration": "WHATSAPP-BAILEYS",
                      "token": "orphan-token-7d1c9e"}, headers={"apikey": sim.api_key})
    assert status == 201

    dry = run_cli("reconcile", "--json", env=env, transcript=transcript)
    assert dry.code == 1, str(dry)
    report = json.loads(dry.stdout)
    assert list(report) == ["counts", "drift", "applied"]
    assert report["counts"] == {**dict.fromkeys(DRIFT_KINDS, 0), "unprovisioned_profile": 2,
                                "orphan_instance": 1}
    assert {(d["kind"], d["user_id"], d["instance_name"]) for d in report["drift"]} == {
        ("unprovisioned_profile", str(users[0]), instance_name(users[0])),
        ("unprovisioned_profile", str(users[1]), instance_name(users[1])),
        ("orphan_instance", str(stranger), instance_name(stranger)),
    }
    assert db.scalar("SELECT count(*) FROM evolution_instance_creation_queue") == 0

    applied = run_cli("reconcile", "--apply", env=env, transcript=transcript)
    assert applied.code == 0, str(applied)
    assert any("-> creation queued" in line for line in applied.out_lines), str(applied)
    assert any("--delete-orphans" in line for line in applied.out_lines), str(applied)
    drained = run_cli("drain", env=env, transcript=transcript)
    assert drained.code == 0 and "completed=2" in drained.stdout, str(drained)

    left = run_cli("reconcile", "--json", env=env, transcript=transcript)
    assert left.code == 1 and json.loads(left.stdout)["counts"]["orphan_instance"] == 1
    removed = run_cli("reconcile", "--apply", "--delete-orphans", "--json", env=env,
                      transcript=transcript)
    assert removed.code == 0, str(removed)
    assert json.loads(removed.stdout)["applied"]["orphan_instance"] == 1
    # The server's delete is asynchronous: finish it, as its cleanup would within ~1.5 s.
    sim_call(sim, lambda s: s.complete_deletes())
    final = run_cli("reconcile", env=env, transcript=transcript)
    assert final.code == 0, str(final)

    secrets = [sim.api_key, SERVICE_LOGIN_PASSWORD, "orphan-token-7d1c9e",
               *instance_tokens(sim)]
    assert transcript.leaks(secrets) == []


def test_reconcile_usage_and_configuration_errors(db: TestDatabase,
                                                  sim: SimulatorThread) -> None:
    env = env_for(db.service_dsn, sim)
    orphans_alone = run_cli("reconcile", "--delete-orphans", env=env)
    assert orphans_alone.code == 2 and "--apply" in orphans_alone.stderr, str(orphans_alone)
    assert run_cli("reconcile", "--bogus", env=env).code == 2
    broken = run_cli("reconcile", env={**env, "LISTENER_DEPROVISION": "maybe"})
    assert broken.code == 78 and "LISTENER_DEPROVISION" in broken.stderr, str(broken)
    missing = run_cli("reconcile", env={"DATABASE_URL": db.service_dsn})
    assert missing.code == 78, str(missing)


def test_stats_counts_deletions_apart(db: TestDatabase) -> None:
    env = {"DATABASE_URL": db.service_dsn}
    kept, gone = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO profiles (id) VALUES (%s), (%s)", (kept, gone))
        conn.execute("DELETE FROM profiles WHERE id = %s", (gone,))
    as_json = run_cli("stats", "--json", env=env)
    figures = json.loads(as_json.stdout)
    assert figures["by_status"] == {"pending": {"count": 1, "avg_retries": 0.0}}
    assert figures["deletions"] == {"pending": {"count": 1, "avg_retries": 0.0}}
    text = run_cli("stats", env=env)
    assert "deletions:" in text.out_lines, str(text)
    assert any(line.split()[:2] == ["pending", "1"] for line in
               text.out_lines[text.out_lines.index("deletions:"):]), str(text)
