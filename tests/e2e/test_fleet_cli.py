"""`stats` per Evolution server (SPEC §10): instances and capacity per server, text and JSON,
from the servers file (no key needed) and the database."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg

from listener.dev.fleet import DevServer, write_servers_file
from listener.dev.process import service_env
from listener.dev.simulator import simulator_threads
from tests.e2e.cli_helpers import run_cli
from tests.pg import TestDatabase

SERVERS = """
[servers.a]
base_url = "http://127.0.0.1:9001"
api_key_env = "EVO_A_KEY"
capacity = 80

[servers.b]
base_url = "http://127.0.0.1:9002"
api_key_env = "EVO_B_KEY"
state = "draining"
"""


def test_stats_shows_instances_and_capacity_per_server(db: TestDatabase, tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(SERVERS)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        for server in ("a", "a", "b", "gone"):
            user = uuid.uuid4()
            conn.execute("INSERT INTO profiles (id) VALUES (%s)", (user,))
            conn.execute("INSERT INTO evolution_instances (user_id, instance_name, server) "
                         "VALUES (%s, %s, %s)", (user, f"evo-{user}", server))
        placed = uuid.uuid4()
        conn.execute("INSERT INTO profiles (id) VALUES (%s)", (placed,))
        conn.execute("UPDATE evolution_instance_creation_queue SET server = 'a' "
                     "WHERE user_id = %s", (placed,))
    env = {"DATABASE_URL": db.service_dsn, "EVOLUTION_API_SERVERS": str(path)}
    figures = json.loads(run_cli("stats", "--json", env=env).stdout)["servers"]
    assert figures == {
        "a": {"state": "active", "capacity": 80, "instances": 2, "in_flight": 1, "free": 77},
        "b": {"state": "draining", "capacity": None, "instances": 1, "in_flight": 0,
              "free": None},
        "gone": {"state": "not configured", "capacity": None, "instances": 1, "in_flight": 0,
                 "free": None},
    }
    text = run_cli("stats", env=env)
    rows = {line.split()[0]: line.split() for line in
            text.out_lines[text.out_lines.index("servers:") + 2:]}
    assert rows["a"] == ["a", "active", "80", "2", "1", "77"], str(text)
    assert rows["b"][:2] == ["b", "draining"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[servers.a]\nbase_url = 'ftp://x'\napi_key_env = 'K'\n")
    broken = run_cli("stats", env={**env, "EVOLUTION_API_SERVERS": str(bad)})
    assert broken.code == 78 and "servers.a.base_url" in broken.stderr, str(broken)


def _checks(out_lines: list[str]) -> dict[str, tuple[str, str]]:
    checks = {}
    for line in out_lines:
        level, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        checks[name] = (level, detail)
    return checks


def test_doctor_checks_each_server_and_names_the_failing_one(
    db: TestDatabase, tmp_path: Path
) -> None:
    with simulator_threads(2) as sims:
        servers = [DevServer("a", sims[0].base_url, sims[0].api_key, 80),
                   DevServer("b", sims[1].base_url, "wrong-fleet-key")]
        env = service_env(db.service_dsn, "http://127.0.0.1:9", "unused")
        env.update(write_servers_file(tmp_path / "servers.toml", servers))
        result = run_cli("doctor", env=env)
    checks = _checks(result.out_lines)
    assert result.code == 1, str(result)
    assert checks["Evolution API reachable (a)"][0] == "ok"
    assert checks["Evolution API key (a)"][0] == "ok"
    assert checks["Evolution API reachable (b)"][0] == "ok"
    level, detail = checks["Evolution API key (b)"]
    assert level == "fail" and "EVO_B_KEY" in detail, str(result)
    level, detail = checks["Evolution servers"]  # a bounded and an unlimited server
    assert level == "warn" and "b has no capacity" in detail, str(result)
    assert "wrong-fleet-key" not in result.stdout + result.stderr
