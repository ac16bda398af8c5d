"""Helpers for end-to-end tests: the CLI as an operator runs it (its own process, an explicit
environment), a simulator in a background thread, Prometheus parsing, small HTTP and SQL
utilities. Everything is bounded in time; everything started is stopped by its caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from listener.dev.simulator import ScriptedFault, Simulator, SimulatorOptions, SimulatorThread
from tests.harness import service_env

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK = "https://project-ref.supabase.co/functions/v1/evolution-webhook-handler"
# What a minimal login shell would hand the command; nothing else of the test's environment
# (TEST_DATABASE_URL, NOTIFY_SOCKET, ...) leaks into it.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")

SEED_STATS_SQL = """
SELECT
  status,
  COUNT(*) as count,
  AVG(retry_count) as avg_retries
FROM evolution_instance_creation_queue
GROUP BY status;
"""
SEED_FAILED_SQL = """
SELECT * FROM evolution_instance_creation_queue
WHERE status = 'failed'
ORDER BY created_at DESC;
"""


# --- the command line --------------------------------------------------------------------


@dataclass
class CliResult:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def out_lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.strip()]

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:  # what an assertion message shows
        return (f"$ evolution-listener {' '.join(self.args)}\n-> exit {self.code} "
                f"in {self.elapsed_s:.2f}s\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}")


@dataclass
class Transcript:
    """Every text a test saw printed, to grep for secrets at the end."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        self.texts.append((label, text))

    def add_result(self, result: CliResult) -> None:
        label = " ".join(result.args)
        self.add(f"{label} (stdout)", result.stdout)
        self.add(f"{label} (stderr)", result.stderr)

    def leaks(self, secrets: Iterable[str]) -> list[str]:
        found = []
        for secret in secrets:
            for label, text in self.texts:
                if secret and secret in text:
                    found.append(f"{secret[:4]}... in {label}")
        return found


def cli_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    full = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    full["PYTHONUNBUFFERED"] = "1"
    full.update(env or {})
    return full


def cli_command(args: Iterable[str]) -> list[str]:
    return [sys.executable, "-m", "listener", *args]


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout_s: float = 30.0,
            transcript: Transcript | None = None) -> CliResult:
    """`evolution-listener ARGS` in its own process with exactly `env` (plus PATH etc.)."""
    started = time.monotonic()
    proc = subprocess.run(
        cli_command(args), env=cli_environment(env), cwd=ROOT, capture_output=True,
        text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False,
    )
    result = CliResult(tuple(args), proc.returncode, proc.stdout, proc.stderr,
                       time.monotonic() - started)
    if transcript is not None:
        transcript.add_result(result)
    return result


def run_cli_parallel(calls: Sequence[tuple[tuple[str, ...], Mapping[str, str] | None]],
                     timeout_s: float = 30.0) -> list[CliResult]:
    """Several independent commands at once (each is mostly interpreter start-up)."""
    started = time.monotonic()
    procs = [
        (args, subprocess.Popen(
            cli_command(args), env=cli_environment(env), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        ))
        for args, env in calls
    ]
    results = []
    try:
        for args, proc in procs:
            remaining = max(1.0, timeout_s - (time.monotonic() - started))
            out, err = proc.communicate(timeout=remaining)
            results.append(CliResult(tuple(args), proc.returncode, out, err,
                                     time.monotonic() - started))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    return results


# --- the simulator -----------------------------------------------------------------------


@contextlib.contextmanager
def simulator_thread(**options: Any) -> Iterator[SimulatorThread]:
    thread = SimulatorThread(SimulatorOptions(**{"seed": 11, **options}))
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def sim_call(thread: SimulatorThread, function: Callable[[Simulator], Any]) -> Any:
    """Run `function(simulator)` on the simulator's own loop (its state is not thread-safe)."""
    return thread.call(function, thread.simulator)


def add_fault(thread: SimulatorThread, **fault: Any) -> None:
    sim_call(thread, lambda sim: sim.options.script.append(ScriptedFault(**fault)))


def set_option(thread: SimulatorThread, name: str, value: Any) -> None:
    sim_call(thread, lambda sim: setattr(sim.options, name, value))


def creates(thread: SimulatorThread, name: str) -> int:
    """Successful instance creations for `name` (one instance ever, whatever happened)."""
    return int(sim_call(thread, lambda sim: sum(
        1 for r in list(sim.requests)
        if r.operation == "create_instance" and r.status == 201 and r.instance == name)))


def webhook_of(thread: SimulatorThread, name: str) -> dict[str, Any] | None:
    def read(sim: Simulator) -> dict[str, Any] | None:
        hook = sim.webhooks.get(name)
        return None if hook is None else dict(hook.row())
    result: dict[str, Any] | None = sim_call(thread, read)
    return result


def instance_tokens(thread: SimulatorThread) -> list[str]:
    return list(sim_call(thread, lambda sim: [i.token for i in sim.instances.values()]))


def env_for(dsn: str, thread: SimulatorThread, **overrides: Any) -> dict[str, str]:
    return service_env(dsn, thread.base_url, thread.api_key, **overrides)


def instance_name(user_id: uuid.UUID) -> str:
    return f"evo-{user_id}"


# --- HTTP and metrics ----------------------------------------------------------------------


def http(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None,
         timeout_s: float = 3.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus exposition, through the reference parser (it raises on
    malformed text)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    if key not in samples:
        known = sorted({n for n, _ in samples if n.startswith(name.rsplit("_", 1)[0])})
        raise AssertionError(f"no sample {name}{labels}; similar: {known[:12]}")
    return samples[key]


# --- waiting and SQL -----------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.02,
             what: str = "condition") -> float:
    """Poll until true; returns the seconds it took. Bounded in time."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(interval_s)


def execute(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def insert_profiles(dsn: str, users: Iterable[uuid.UUID]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for user in users:
            conn.execute("INSERT INTO profiles (id) VALUES (%s)", (user,))


def status_of(dsn: str, user: uuid.UUID) -> str | None:
    rows = execute(dsn, "SELECT status FROM evolution_instance_creation_queue "
                        "WHERE user_id = %s", (user,))
    return str(rows[0][0]) if rows else None


@contextlib.contextmanager
def login_role(admin_dsn: str, prefix: str = "el_e2e") -> Iterator[tuple[str, str]]:
    """A login role of this test's own, holding only evolution_listener; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    execute(admin_dsn, f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE "
                       "evolution_listener")
    try:
        yield name, password
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %s", (name,))
            for _ in range(50):
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                                   (name,)).fetchone()
                if row is None or row[0] == 0:
                    break
                time.sleep(0.05)
            conn.execute(f"DROP ROLE IF EXISTS {name}")
