"""The peer comparison of issue 13: evolution-listener vs pgqueuer, same job, same machine.

Both run the full job (create with the webhook + webhook set + record, concurrency 16) against
the same simulator build and the same PostgreSQL server, each in its own process and its own
fresh database, on the same two workloads:
- drain: 3,000 signups queued while nothing runs, then the process starts; jobs/s from the
  spawn to the last completion (start-up included);
- steady: 200 signups/s for 10 s (open loop) after a warm-up; latency from the signup's
  commit (the queue insert) to the completing commit, p99.
Runs are interleaved (ours, peer, ours, peer, ...) so a drift of the shared VM hits both
alike; the figures are medians over the repeats, every run is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import peer_pgqueuer
from bench.cases import (
    Options,
    _finished_count,
    _latencies_ms,
    _wait_finished,
    completion_span,
)
from bench.harness import (
    ROOT,
    SERVICE_ROLE,
    Database,
    MachineMeter,
    ProcessSample,
    SimulatorProcess,
    _vm_hwm_bytes,
    free_port,
    fresh_database,
    prepare_database,
    running_services,
    service_env,
)
from bench.load import backlog, steady_signups
from listener.dev.demo.stats import rate_per_s

CONCURRENCY = 16
RATE = 200.0
SUPABASE_URL = "https://bench-project.supabase.co"
MIB = 1024 * 1024
SYSTEMS = ("ours", "pgqueuer")


class PeerProcess:
    """The pgqueuer worker in its own process, with the same RSS/CPU reading as the service."""

    def __init__(self, db: Database, sim: SimulatorProcess) -> None:
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop)
            prefix="bench-peer-", suffix=".log", delete=False)
        env = {**os.environ, peer_pgqueuer.API_KEY_ENV: sim.api_key}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(peer_pgqueuer.__file__)), "--dsn", db.admin_dsn,
             "--base-url", sim.base_url, "--supabase-url", SUPABASE_URL,
             "--concurrency", str(CONCURRENCY)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.sample = ProcessSample()
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="monitor-peer", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            self.read_sample()
            self._stop.wait(0.05)

    def read_sample(self) -> ProcessSample:
        with contextlib.suppress(psutil.Error):
            ps = psutil.Process(self.proc.pid)
            times = ps.cpu_times()
            peak = max(ps.memory_info().rss, _vm_hwm_bytes(self.proc.pid) or 0)
            self.sample.peak_rss_bytes = max(self.sample.peak_rss_bytes, peak)
            self.sample.cpu_s = float(times.user + times.system)
            self.sample.samples += 1
        return self.sample

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            self._log.flush()
            tail = Path(self._log.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pgqueuer worker exited ({self.proc.returncode}): {tail}")

    def stop(self) -> None:
        self.read_sample()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._stop.set()
        self._monitor.join(5)
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


@contextlib.contextmanager
def _running(system: str, db: Database, sim: SimulatorProcess) -> Iterator[Any]:
    """Start one system on `db`; yields an object with read_sample(); stops it on exit."""
    if system == "ours":
        env = service_env(db, sim, free_port(), LISTENER_CONCURRENCY=str(CONCURRENCY),
                          SUPABASE_URL=SUPABASE_URL)
        with running_services([env], label="peer-ours") as group:
            yield group.members[0]
    else:
        peer = PeerProcess(db, sim)
        try:
            yield peer
        finally:
            peer.stop()


@contextlib.contextmanager
def _run_database(server: Database, system: str, index: int) -> Iterator[Database]:
    """A fresh migrated database on the shared server (and pgqueuer's schema for the peer)."""
    name = f"peer_{system}_{index}"
    server.execute(f"CREATE DATABASE {name}")
    dsn = server.pg.dsn_for(name)
    try:
        prepare_database(dsn)
        if system == "pgqueuer":
            peer_pgqueuer.install(dsn)
        yield Database(pg=server.pg, admin_dsn=dsn,
                       service_dsn=server.pg.dsn_for(name, SERVICE_ROLE))
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _checks(db: Database, sim: SimulatorProcess, users: int) -> dict[str, Any]:
    """Each user provisioned once: one instance in the simulator and one recorded row."""
    recorded = int(db.scalar("SELECT count(*) FROM public.evolution_instances") or 0)
    state = sim.state()
    return {"users": users, "recorded": recorded, "simulator_instances": int(state["instances"]),
            "simulator_requests": int(state["requests_total"])}


def drain_run(options: Options, server: Database, system: str, index: int) -> dict[str, Any]:
    count = 600 if options.quick else 3000
    with _run_database(server, system, index) as db, SimulatorProcess() as sim:
        backlog(db.admin_dsn, count)
        if system == "pgqueuer":
            db.execute("VACUUM ANALYZE public.pgqueuer")
        spawned_at = db.scalar("SELECT clock_timestamp()")
        with _running(system, db, sim) as proc:
            _wait_finished(db, count, 120)
            sample = proc.read_sample()
        completed, span_s, since_spawn_s = completion_span(db, spawned_at)
        checks = _checks(db, sim, count)
    return {
        "system": system,
        "backlog": count,
        "completed": completed,
        "jobs_per_s_incl_startup": round(rate_per_s(completed, since_spawn_s), 1),
        "jobs_per_s_first_to_last": round(rate_per_s(completed - 1, span_s), 1),
        "spawn_to_last_s": round(since_spawn_s, 3),
        "cpu_ms_per_job": round(sample.cpu_s / completed * 1000, 3) if completed else None,
        "peak_rss_mib": round(sample.peak_rss_bytes / MIB, 1),
        "checks": checks,
    }


def steady_run(options: Options, server: Database, system: str, index: int) -> dict[str, Any]:
    seconds = 3.0 if options.quick else 10.0
    with _run_database(server, system, index) as db, SimulatorProcess() as sim, \
            _running(system, db, sim) as proc:
        if system == "ours":
            proc.wait_ready()
        # Warm-up: also the peer's readiness (its first jobs complete once it listens).
        warm = asyncio.run(steady_signups(db.admin_dsn, RATE, int(RATE * options.warmup_s)))
        _wait_finished(db, len(warm.users), 60)
        cpu_before, done_before = proc.read_sample().cpu_s, _finished_count(db)
        load = asyncio.run(steady_signups(db.admin_dsn, RATE, int(RATE * seconds)))
        _wait_finished(db, len(warm.users) + len(load.users), 60)
        sample = proc.read_sample()
        entries = _finished_count(db) - done_before
        latency = _latencies_ms(db, load.users)
        checks = _checks(db, sim, len(warm.users) + len(load.users))
    cpu_s = sample.cpu_s - cpu_before
    return {
        "system": system,
        "rate_per_s": RATE,
        "duration_s": seconds,
        **latency,
        "latency_ms": latency["commit_to_commit_ms"],
        "load": load.as_dict(),
        "cpu_ms_per_job": round(cpu_s / entries * 1000, 3) if entries else None,
        "peak_rss_mib": round(sample.peak_rss_bytes / MIB, 1),
        "checks": checks,
    }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def peer_comparison(options: Options) -> dict[str, Any]:
    """Interleaved repeats: drain ours, drain peer, steady ours, steady peer; x3 (quick x1)."""
    repeats = 1 if options.quick else 3
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        workload: {system: [] for system in SYSTEMS} for workload in ("drain", "steady")}
    workloads: dict[str, Callable[[Options, Database, str, int], dict[str, Any]]] = {
        "drain": drain_run, "steady": steady_run}
    started = time.monotonic()
    index = 0
    with fresh_database(commit_timestamps=True) as server:
        for _ in range(repeats):
            for workload, run in workloads.items():
                for system in SYSTEMS:
                    index += 1
                    with MachineMeter() as meter:  # how much the machine's other users took
                        result = run(options, server, system, index)
                    result["machine"] = meter.report()
                    runs[workload][system].append(result)
    drain = {s: [r["jobs_per_s_incl_startup"] for r in runs["drain"][s]] for s in SYSTEMS}
    p99 = {s: [(r["latency_ms"] or {}).get("p99") for r in runs["steady"][s]] for s in SYSTEMS}
    rss = {s: [r["peak_rss_mib"] for r in runs["drain"][s] + runs["steady"][s]]
           for s in SYSTEMS}
    cpu = {s: [r["cpu_ms_per_job"] for r in runs["drain"][s]] for s in SYSTEMS}
    med_drain = {s: _median(drain[s]) for s in SYSTEMS}
    med_p99 = {s: _median(p99[s]) for s in SYSTEMS}
    return {
        "concurrency": CONCURRENCY,
        "repeats": repeats,
        "order": "per repeat: drain ours, drain pgqueuer, steady ours, steady pgqueuer",
        "peer": f"pgqueuer {_version('pgqueuer')} on asyncpg {_version('asyncpg')}, uvloop, "
                "plain aiohttp job (bench/peer_pgqueuer.py)",
        "drain_jobs_per_s": {s: drain[s] for s in SYSTEMS},
        "drain_median_jobs_per_s": med_drain,
        "drain_ratio": _ratio(med_drain["ours"], med_drain["pgqueuer"]),
        # Each repeat's pair ran back to back: its ratio cancels part of a drift that hits
        # both, which the ratio of medians does not (a shared machine's load moves a lot).
        "drain_ratio_per_repeat": [_ratio(a, b) for a, b in zip(drain["ours"],
                                                                drain["pgqueuer"], strict=True)],
        "steady_p99_ms": {s: p99[s] for s in SYSTEMS},
        "steady_p99_median_ms": med_p99,
        "steady_p99_ratio": _ratio(med_p99["ours"], med_p99["pgqueuer"]),
        "steady_p99_ratio_per_repeat": [_ratio(a, b) for a, b in zip(p99["ours"],
                                                                     p99["pgqueuer"],
                                                                     strict=True)],
        "other_users_share": {f"{w}_{s}": [r["machine"]["other_users_share"]
                                           for r in runs[w][s]]
                              for w in runs for s in SYSTEMS},
        "peak_rss_mib": {s: max(rss[s]) for s in SYSTEMS},
        "drain_cpu_ms_per_job_median": {s: _median(cpu[s]) for s in SYSTEMS},
        "elapsed_s": round(time.monotonic() - started, 1),
        "runs": runs,
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"

