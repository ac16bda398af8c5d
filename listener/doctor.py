"""`evolution-listener doctor`: every precondition of a working service, one line each.

Each check says ok / warn / fail and, when not ok, what to do. It never prints a secret: the
DSN is shown without its password and the API key is never echoed.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

import psycopg

from listener.config import (
    EX_CONFIG,
    ConfigError,
    DatabaseSettings,
    Settings,
    load_settings,
    transaction_pooler_reason,
)
from listener.db import queries
from listener.db.migrate import MigrationState, migration_states
from listener.dbhost import (
    SESSION_POOLER_ADVICE,
    Endpoint,
    Kind,
    Probe,
    classify,
    endpoint_of,
    ipv6_only_unreachable,
    probe_reachability,
)
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import AuthError, EvolutionError
from listener.fleet.servers import ServerSpec
from listener.text import one_line

CHECK_TIMEOUT_S = 5.0
# Supabase's default Pool Size (Database settings) on the smaller compute sizes: the session
# pooler refuses clients beyond it, per role and database, across every replica.
SUPABASE_DEFAULT_POOL_SIZE = 15


@dataclass(frozen=True)
class Check:
    level: str  # "ok" | "warn" | "fail"
    name: str
    detail: str


def _line(error: BaseException) -> str:
    return one_line(error, 300)


def connection_budget(settings: Settings, kind: Kind) -> tuple[str, str]:
    """Pure: the budget line (level, detail): connections one replica may open, and whether
    that fits a Supabase session pooler's default Pool Size."""
    total = settings.connections_per_replica
    detail = (f"{total} connections per replica (pool {settings.pool_size} "
              f"[LISTENER_DB_POOL_SIZE] + 1 LISTEN); N replicas need N x {total}")
    if kind is not Kind.SUPABASE_SESSION_POOLER:
        return "ok", detail + " within the server's max_connections"
    if total > SUPABASE_DEFAULT_POOL_SIZE:
        return "warn", (f"{detail}: more than the session pooler's default Pool Size "
                        f"({SUPABASE_DEFAULT_POOL_SIZE}) -> lower LISTENER_DB_POOL_SIZE or "
                        "raise Pool Size in the Supabase database settings")
    return "ok", detail + " within the project's Pool Size (Supabase database settings)"


def pooler_user_warning(endpoint: Endpoint, kind: Kind) -> str | None:
    """Pure: the Supabase session pooler names the project in the user (`<role>.<ref>`)."""
    if kind is not Kind.SUPABASE_SESSION_POOLER or "." in endpoint.user:
        return None
    role = endpoint.user or "evolution_listener_svc"
    return (f"the session pooler expects the user as <role>.<project-ref> (e.g. "
            f"{role}.<project-ref>), not {endpoint.user or 'none'!r}")


def fleet_warnings(servers: Sequence[ServerSpec]) -> list[str]:
    """What in a servers file works but is likely a mistake (SPEC §10)."""
    warnings = []
    if all(not s.accepts_placements for s in servers):
        warnings.append("every server is draining: new signups wait until one is active")
    active = [s for s in servers if s.accepts_placements]
    bounded = [s.name for s in active if s.capacity is not None]
    unlimited = [s.name for s in active if s.capacity is None]
    if bounded and unlimited:
        warnings.append(f"{', '.join(unlimited)} has no capacity: it takes nearly every new "
                        f"instance while {', '.join(bounded)} has one; give every server a "
                        "capacity to spread by share")
    return warnings


def migrations_line(states: list[MigrationState]) -> tuple[str, str]:
    """Pure: the migrations line from each migration's state."""
    missing = [s for s in states if not s.applied]
    if missing:
        first = missing[0]
        return "fail", (f"not applied: {', '.join(s.filename for s in missing)} "
                        f"({first.filename}: missing {', '.join(first.missing[:3])}) -> run "
                        "`evolution-listener migrate` with an owner's DSN, or apply the "
                        "files of `evolution-listener export-migrations`")
    recognised = [s for s in states if not s.recorded]
    if recognised:
        return "ok", (f"all {len(states)} applied ({len(recognised)} recognised from the "
                      "schema: applied outside the runner, e.g. supabase/migrations)")
    return "ok", f"all {len(states)} applied"


class Doctor:
    def __init__(self, env: Mapping[str, str], out: TextIO,
                 probe: Probe = probe_reachability) -> None:
        self.env = env
        self.probe = probe
        self.out = out
        self.checks: list[Check] = []
        self.config_failed = False

    def report(self, level: str, name: str, detail: str) -> None:
        check = Check(level, name, detail)
        self.checks.append(check)
        print(f"{level:<5} {name}: {detail}", file=self.out, flush=True)

    async def run(self) -> int:
        settings: Settings | None = None
        database: DatabaseSettings | None = None
        try:
            settings = load_settings(Settings, self.env)
            database = settings
            self.report("ok", "config", "every required variable is set and valid")
        except ConfigError as error:
            self.config_failed = True
            self.report("fail", "config", f"{error} -> fix the environment / EnvironmentFile")
            try:
                database = load_settings(DatabaseSettings, self.env)
            except ConfigError:
                database = None
        if database is not None:
            await self._database_checks(database, settings)
        if settings is not None:
            await self._api_checks(settings)
            self._webhook_check(settings)
        if self.config_failed:
            return EX_CONFIG
        return 1 if any(c.level == "fail" for c in self.checks) else 0

    async def _network_check(self, database: DatabaseSettings,
                             settings: Settings | None) -> bool:
        """Connection kind, budget, and an IPv6-only host from an IPv4-only machine; False
        when connecting is pointless."""
        endpoint = endpoint_of(database.dsn)
        if endpoint is None:
            return True
        kind = classify(endpoint)
        self.report("ok", "connection kind", f"{kind.value} ({endpoint.host or 'socket'}:"
                                             f"{endpoint.port})")
        if settings is not None:
            level, detail = connection_budget(settings, kind)
            self.report(level, "connection budget", detail)
        warning = pooler_user_warning(endpoint, kind)
        if warning:
            self.report("warn", "pooler user", warning)
        if kind is Kind.UNIX_SOCKET:
            return True
        try:  # DNS can hang: off the loop, bounded; the connect below reports a slow DNS
            found = await asyncio.wait_for(
                asyncio.to_thread(self.probe, endpoint.host, endpoint.port), CHECK_TIMEOUT_S)
        except TimeoutError:
            return True
        if ipv6_only_unreachable(found):
            self.report("fail", "database network",
                        f"{endpoint.host} has only IPv6 addresses and this machine has no "
                        f"IPv6 route -> {SESSION_POOLER_ADVICE}")
            return False
        return True

    async def _database_checks(self, database: DatabaseSettings,
                               settings: Settings | None = None) -> None:
        shown = database.dsn_for_display
        reason = transaction_pooler_reason(database.dsn)
        if reason:
            self.report("fail", "not a transaction pooler", f"DATABASE_URL {reason}")
            return
        self.report("ok", "not a transaction pooler", "LISTEN can work through this DSN")
        if not await self._network_check(database, settings):
            return
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(database.dsn, autocommit=True,
                                                connect_timeout=int(CHECK_TIMEOUT_S)),
                CHECK_TIMEOUT_S + 1,
            )
        except (psycopg.Error, OSError, TimeoutError) as error:
            advice = "check host, port, credentials, firewall"
            if "network is unreachable" in str(error).lower():
                advice = f"no route to the host (IPv6-only?) -> {SESSION_POOLER_ADVICE}"
            self.report("fail", "database reachable", f"{shown}: {_line(error)} -> {advice}")
            return
        async with conn:
            version = conn.info.parameter_status("server_version") or "?"
            self.report("ok", "database reachable", f"PostgreSQL {version} at {shown}")
            try:
                states = await migration_states(database.dsn)
            except psycopg.Error as error:
                self.report("fail", "migrations current", _line(error))
            else:
                level, detail = migrations_line(states)
                self.report(level, "migrations current", detail)
            await self._trigger_check(conn)
            await self._listen_check(conn)

    async def _trigger_check(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        try:
            cursor = await conn.execute(queries.TRIGGER_STATE, {"name": queries.TRIGGER_NAME})
            row = await cursor.fetchone()
        except psycopg.Error as error:
            self.report("fail", "signup trigger", _line(error))
            return
        if row is None:
            self.report("fail", "signup trigger",
                        f"{queries.TRIGGER_NAME} is missing on public.profiles -> run "
                        "`evolution-listener migrate`")
        elif row[0] == "D":
            self.report("fail", "signup trigger",
                        f"{queries.TRIGGER_NAME} is disabled -> ALTER TABLE public.profiles "
                        f"ENABLE TRIGGER {queries.TRIGGER_NAME}")
        else:
            self.report("ok", "signup trigger", f"{queries.TRIGGER_NAME} enabled")

    async def _listen_check(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        channel = f"evolution_listener_doctor_{uuid.uuid4().hex[:8]}"
        payload = uuid.uuid4().hex
        try:
            await conn.execute(f'LISTEN "{channel}"'.encode())
            await conn.execute(queries.NOTIFY_SELF, {"channel": channel, "payload": payload})
            received = False
            async for note in conn.notifies(timeout=CHECK_TIMEOUT_S, stop_after=1):
                received = note.payload == payload
        except psycopg.Error as error:
            self.report("fail", "LISTEN/NOTIFY", _line(error))
            return
        if received:
            self.report("ok", "LISTEN/NOTIFY", "a NOTIFY to itself arrived")
        else:
            self.report("fail", "LISTEN/NOTIFY",
                        "a NOTIFY to itself never arrived -> the DSN goes through a pooler "
                        "that drops notifications; use a direct or session-mode connection")

    async def _api_checks(self, settings: Settings) -> None:
        """Each Evolution server (SPEC §10): reachable, key accepted. One server keeps the
        plain check names; with a servers file each name carries the server's."""
        fleet = settings.servers_file is not None
        for spec in settings.servers:
            await self._server_checks(settings, spec, fleet)
        if fleet:
            for warning in fleet_warnings(settings.servers):
                self.report("warn", "Evolution servers", warning)

    async def _server_checks(self, settings: Settings, spec: ServerSpec, fleet: bool) -> None:
        suffix = f" ({spec.name})" if fleet else ""
        url_hint = f"servers.{spec.name}.base_url in {settings.servers_file}" if fleet \
            else "EVOLUTION_API_BASE_URL"
        key_hint = spec.api_key_env or "EVOLUTION_API_KEY"
        client = EvolutionClient(spec.base_url, spec.api_key.get_secret_value(),
                                 timeout_s=min(settings.http_timeout_s, CHECK_TIMEOUT_S))
        async with client:
            try:
                info = await client.server_info()
            except EvolutionError as error:
                self.report("fail", f"Evolution API reachable{suffix}",
                            f"{spec.base_url}: {_line(error)} -> check "
                            f"{url_hint} and that the server is up")
                return
            self.report("ok", f"Evolution API reachable{suffix}",
                        f"{spec.base_url} (version {info.version or '?'})")
            try:
                await client.check_key()
            except AuthError:
                self.report("fail", f"Evolution API key{suffix}",
                            f"rejected (401) -> set {key_hint} to the server's "
                            "AUTHENTICATION_API_KEY")
                return
            except EvolutionError as error:
                self.report("fail", f"Evolution API key{suffix}", _line(error))
                return
            self.report("ok", f"Evolution API key{suffix}", "accepted")

    def _webhook_check(self, settings: Settings) -> None:
        url = settings.webhook_url
        parts = urlsplit(url)
        if parts.scheme != "https":
            self.report("warn", "webhook URL",
                        f"{url} is not https: deliveries (with their Authorization header) "
                        "travel in clear text")
        elif parts.hostname in ("localhost", "127.0.0.1", "::1"):
            self.report("warn", "webhook URL",
                        f"{url} points at this machine: the Evolution API server must reach it")
        else:
            self.report("ok", "webhook URL", url)
        if settings.webhook_authorization is None:
            self.report("warn", "webhook authorization",
                        "WEBHOOK_AUTHORIZATION is not set: a Supabase function that verifies "
                        "JWTs will reject the deliveries")


async def run_doctor(env: Mapping[str, str], out: TextIO | None = None,
                     probe: Probe = probe_reachability) -> int:
    return await Doctor(env, out or sys.stdout, probe).run()
