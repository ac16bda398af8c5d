"""The parts a benchmark case starts and stops: a fresh PostgreSQL, the simulator, the service.

Why processes: the figures must be what an operator gets, so the service runs as its console
script in its own process (its RSS and CPU are then its own), and the simulator runs in
another process so it does not share a GIL with the service or the load generator.
Everything here is a context manager that stops what it started, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from listener.db.migrate import migrate
from listener.dev import process
from listener.dev.embedded_pg import EmbeddedPostgres, free_port
from listener.dev.process import http_get

ROOT = Path(__file__).resolve().parents[1]
SERVICE_ROLE = "bench_service"
SIM_API_KEY = "bench-sim-key"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0
MONITOR_INTERVAL_S = 0.05


def console_script() -> list[str]:
    """The installed `evolution-listener` next to this interpreter, else `python -m listener`."""
    script = Path(sys.executable).parent / "evolution-listener"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "listener"]


def http_post_json(url: str, payload: Mapping[str, Any], timeout: float = 5.0) -> Any:
    request = urllib.request.Request(  # noqa: S310 (loopback only)
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


# --- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class Database:
    """A migrated database on a throwaway server, and the login the service uses."""

    pg: EmbeddedPostgres
    admin_dsn: str
    service_dsn: str

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            cursor = conn.execute(sql.encode() if params is None else sql, params)
            return cursor.fetchall() if cursor.description else []

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.execute(sql, params)
        return rows[0][0] if rows else None


def prepare_database(admin_dsn: str, *, pg_stat_statements: bool = False) -> None:
    """Migrate, and create the least-privilege login the service runs as (as in production)."""
    asyncio.run(migrate(admin_dsn))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                              (SERVICE_ROLE,)).fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE {SERVICE_ROLE} LOGIN")
        conn.execute(f"GRANT evolution_listener TO {SERVICE_ROLE}")
        if pg_stat_statements:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


@contextlib.contextmanager
def fresh_database(*, durable: bool = True, pg_stat_statements: bool = False,
                   commit_timestamps: bool = False) -> Iterator[Database]:
    """A new durable (fsync on) PostgreSQL 18, migrated; stopped and removed on exit.

    `commit_timestamps` turns on track_commit_timestamp, so a latency can be read from
    commit to commit (pg_xact_commit_timestamp of each row's xmin), not only from the
    timestamps the rows carry.
    """
    pg = EmbeddedPostgres(durable=durable)
    try:
        pg.start()
        settings: dict[str, str] = {}
        if pg_stat_statements:
            settings["shared_preload_libraries"] = "pg_stat_statements"
            settings["pg_stat_statements.track"] = "all"
        if commit_timestamps:
            settings["track_commit_timestamp"] = "on"
        ACTIVE_PGDATA.add(pg.pgdata)
        if settings:
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                for name, value in settings.items():
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'".encode())
            pg.restart()
        prepare_database(pg.dsn, pg_stat_statements=pg_stat_statements)
        yield Database(pg=pg, admin_dsn=pg.dsn, service_dsn=pg.dsn_for("postgres", SERVICE_ROLE))
    finally:
        ACTIVE_PGDATA.discard(pg.pgdata)
        pg.stop()


def postgres_cpu(db: Database) -> dict[int, float]:
    """CPU seconds per live server process (the postmaster and its children), by pid."""
    found: dict[int, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        pid = int((db.pg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        master = psutil.Process(pid)
        for proc in [master, *master.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                found[proc.pid] = float(times.user + times.system)
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two `postgres_cpu` readings by the processes alive at the second."""
    return sum(max(0.0, value - before.get(pid, 0.0)) for pid, value in after.items())


def top_statements(db: Database, limit: int = 8) -> list[dict[str, Any]]:
    """pg_stat_statements, heaviest first (only when the case ran with it enabled)."""
    rows = db.execute(
        "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), "
        "left(regexp_replace(query, '\\s+', ' ', 'g'), 110) "
        "FROM pg_stat_statements WHERE query NOT ILIKE '%%pg_stat_statements%%' "
        "ORDER BY total_exec_time DESC LIMIT %s", (limit,))
    return [{"calls": r[0], "total_ms": float(r[1]), "mean_ms": float(r[2]), "query": r[3]}
            for r in rows]


# --- processes -------------------------------------------------------------------------------


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, wait, then SIGKILL: a bounded stop of one process we started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


class SimulatorProcess:
    """`evolution-listener simulator` on 127.0.0.1 in its own process."""

    def __init__(self, *, latency_ms: float = 0.0, extra_args: tuple[str, ...] = (),
                 record: bool = False) -> None:
        self.record = record
        self.port = free_port()
        self.latency_ms = latency_ms
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = SIM_API_KEY
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop)
            prefix="bench-sim-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [*console_script(), "simulator", "--host", "127.0.0.1", "--port", str(self.port),
             "--api-key", self.api_key, "--latency-ms", str(latency_ms), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited ({self.proc.returncode}): {self.output()}")
            with contextlib.suppress(OSError):
                if http_get(f"{self.base_url}/_sim/state", 1.0)[0] == 200:
                    # Its request log costs it CPU per request, taken from the service on
                    # a 2-core machine; the checks only need its counters.
                    self.control({"record_requests": self.record})
                    return
            time.sleep(0.05)
        raise RuntimeError(f"simulator not ready in {timeout_s}s: {self.output()}")

    def output(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-2000:]

    def cpu_s(self) -> float:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(self.proc.pid).cpu_times()
            return float(times.user + times.system)
        return 0.0

    def state(self) -> dict[str, Any]:
        status, body = http_get(f"{self.base_url}/_sim/state?limit=0")
        if status != 200:
            raise RuntimeError(f"simulator state: HTTP {status}")
        result: dict[str, Any] = json.loads(body)
        return result

    def control(self, payload: Mapping[str, Any]) -> Any:
        return http_post_json(f"{self.base_url}/_sim/control", payload)

    def requests(self, page: int = 5000, max_pages: int = 200) -> list[dict[str, Any]]:
        """The whole request log, paged (bounded: at most `page * max_pages` records)."""
        out: list[dict[str, Any]] = []
        since = 0
        for _ in range(max_pages):
            status, body = http_get(
                f"{self.base_url}/_sim/requests?since={since}&limit={page}", 30.0)
            if status != 200:
                raise RuntimeError(f"simulator requests: HTTP {status}")
            records = json.loads(body)["requests"]
            if not records:
                break
            out.extend(records)
            since = int(records[-1]["seq"])
        return out

    def stop(self) -> None:
        _terminate(self.proc, 10)
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def __enter__(self) -> SimulatorProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_env(db: Database, sim: SimulatorProcess, metrics_port: int,
                **overrides: str) -> dict[str, str]:
    """An operator's configuration (the shared builder): concurrency 64 and quiet logs."""
    return process.service_env(
        db.service_dsn, sim.base_url, sim.api_key, metrics_port=metrics_port,
        supabase_url="https://bench-project.supabase.co",
        **{"LISTENER_CONCURRENCY": "64", "LISTENER_LOG_LEVEL": "WARNING", **overrides},
    )


def _vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's peak RSS of a process (VmHWM), exact where polling could miss a spike."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


@dataclass
class ProcessSample:
    peak_rss_bytes: int = 0
    cpu_s: float = 0.0
    samples: int = 0


class ServiceProcess(process.ServiceProcess):
    """The shared service launcher (listener/dev/process.py) running the console script,
    plus an RSS/CPU monitor; `profile_out`: a path for a py-spy record (collapsed stacks)."""

    def __init__(self, env: Mapping[str, str], *, name: str = "service",
                 profile_out: Path | None = None) -> None:
        super().__init__(env, program=console_script(), cwd=ROOT, name=f"bench-{name}")
        self.ps = psutil.Process(self.proc.pid)
        self.sample = ProcessSample()
        self._stop_monitor = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name=f"monitor-{name}",
                                         daemon=True)
        self._monitor.start()
        self.profile_out = profile_out
        self._spy: subprocess.Popen[bytes] | None = None

    def _watch(self) -> None:
        while not self._stop_monitor.is_set() and self.proc.poll() is None:
            self.read_sample()
            self._stop_monitor.wait(MONITOR_INTERVAL_S)

    def read_sample(self) -> ProcessSample:
        with contextlib.suppress(psutil.Error):
            rss = self.ps.memory_info().rss
            hwm = _vm_hwm_bytes(self.proc.pid) or 0
            times = self.ps.cpu_times()
            self.sample.peak_rss_bytes = max(self.sample.peak_rss_bytes, rss, hwm)
            self.sample.cpu_s = float(times.user + times.system)
            self.sample.samples += 1
        return self.sample

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        super().wait_ready(timeout_s)
        self._start_profiler()

    def _start_profiler(self) -> None:
        if self.profile_out is None or self._spy is not None:
            return
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            print(f"  (no py-spy in {spy.parent}: `{sys.executable} -m pip install py-spy` "
                  "to profile)", flush=True)
            return
        self._spy = subprocess.Popen(
            [str(spy), "record", "--pid", str(self.proc.pid), "--format", "raw", "--rate", "250",
             "--nonblocking", "-o", str(self.profile_out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful), bounded; the final sample is read just before."""
        self.read_sample()
        if self._spy is not None:
            with contextlib.suppress(ProcessLookupError):
                self._spy.send_signal(signal.SIGINT)
            try:
                self._spy.wait(30)
            except subprocess.TimeoutExpired:
                self._spy.kill()
                self._spy.wait(5)
        code = super().stop(timeout_s)
        self._stop_monitor.set()
        self._monitor.join(5)
        return code




@dataclass
class Services:
    """Several replicas started together; stopped together."""

    members: list[ServiceProcess] = field(default_factory=list)

    def stop(self) -> list[int]:
        codes = []
        for member in self.members:  # all at once: replicas drain in parallel
            if member.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    member.proc.send_signal(signal.SIGTERM)
        for member in self.members:
            codes.append(member.stop())
        return codes


@contextlib.contextmanager
def running_services(envs: list[dict[str, str]], *, profile_dir: Path | None = None,
                     label: str = "service") -> Iterator[Services]:
    group = Services()
    try:
        for index, env in enumerate(envs):
            out = None
            if profile_dir is not None and index == 0:
                out = profile_dir / f"{label}.pyspy.txt"
            group.members.append(ServiceProcess(env, name=f"{label}-{index}", profile_out=out))
        yield group
    finally:
        group.stop()


def summarize_pyspy(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    if not path.exists():
        return {}
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short_frame(f) for f in stack.split(";")]
        if frames:
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count
    if total == 0:
        return {}

    def share(counts: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [{"frame": frame, "share": round(count / total, 4)} for frame, count in ranked]

    return {"samples": total, "self": share(self_counts), "inclusive": share(incl_counts)}


def _short_frame(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'func (module.py)': group a function's lines."""
    match = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not match:
        return frame.strip()
    func, path = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


# --- the machine -----------------------------------------------------------------------------


def _proc_stat() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of all CPUs since boot; busy excludes steal (time the
    hypervisor gave to someone else while this VM wanted to run)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    fields += [0] * (8 - len(fields))
    idle = fields[3] + fields[4]
    steal = fields[7]
    total = sum(fields[:8])
    return total - idle - steal, total, steal


ACTIVE_PGDATA: set[Path] = set()


def _our_processes() -> list[psutil.Process]:
    """This process, its descendants, and the servers of our embedded PostgreSQL(s)."""
    me = psutil.Process()
    found = [me, *me.children(recursive=True)]
    for pgdata in list(ACTIVE_PGDATA):
        with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
            pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
            master = psutil.Process(pid)
            found += [master, *master.children(recursive=True)]
    return found


class MachineMeter:
    """CPU used on the whole machine vs by this benchmark's own processes, sampled in a
    thread: the difference is what other users of the machine took during a case."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.cores = os.cpu_count() or 1
        self._tick = os.sysconf("SC_CLK_TCK")
        self._last: dict[int, float] = {}
        self.ours_s = 0.0
        self.busy_s = 0.0
        self.steal_s = 0.0
        self.elapsed_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-meter", daemon=True)

    def _ours_delta(self) -> float:
        delta = 0.0
        for proc in _our_processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                now = float(times.user + times.system)
                delta += max(0.0, now - self._last.get(proc.pid, now))
                self._last[proc.pid] = now
        return delta

    def _run(self) -> None:
        busy0, _, steal0 = _proc_stat()
        started = time.monotonic()
        self._ours_delta()
        while not self._stop.wait(self.interval_s):
            self.ours_s += self._ours_delta()
            busy, _, steal = _proc_stat()
            self.busy_s = (busy - busy0) / self._tick
            self.steal_s = (steal - steal0) / self._tick
            self.elapsed_s = time.monotonic() - started
        self.ours_s += self._ours_delta()

    def __enter__(self) -> MachineMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def report(self) -> dict[str, float]:
        capacity = max(self.elapsed_s * self.cores, 1e-9)
        others = max(0.0, self.busy_s - self.ours_s)
        return {
            "elapsed_s": round(self.elapsed_s, 1),
            "machine_busy_share": round(self.busy_s / capacity, 3),
            "bench_processes_share": round(self.ours_s / capacity, 3),
            "other_users_share": round(others / capacity, 3),
            "steal_share": round(self.steal_s / capacity, 3),
        }


def machine_busy_share(seconds: float = 1.0) -> float:
    busy0, total0, _ = _proc_stat()
    time.sleep(seconds)
    busy1, total1, _ = _proc_stat()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15) -> tuple[float, float]:
    """Wait (bounded) until the machine is mostly idle before a case: other work on a
    2-core machine moves every figure. Returns (busy share last seen, seconds waited)."""
    started = time.monotonic()
    share = machine_busy_share()
    while share > threshold and time.monotonic() - started < max_wait_s:
        share = machine_busy_share(2.0)
    return share, time.monotonic() - started
