"""`evolution-listener doctor`: every precondition of a working service, one line each.

Each check says ok / warn / fail and, when not ok, what to do. It never prints a secret: the
DSN is shown without its password and the API key is never echoed.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Mapping
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
from listener.db.migrate import pending_migrations
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import AuthError, EvolutionError
from listener.text import one_line

CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    level: str  # "ok" | "warn" | "fail"
    name: str
    detail: str


def _line(error: BaseException) -> str:
    return one_line(error, 300)


class Doctor:
    def __init__(self, env: Mapping[str, str], out: TextIO) -> None:
        self.env = env
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
            await self._database_checks(database)
        if settings is not None:
            await self._api_checks(settings)
            self._webhook_check(settings)
        if self.config_failed:
            return EX_CONFIG
        return 1 if any(c.level == "fail" for c in self.checks) else 0

    async def _database_checks(self, database: DatabaseSettings) -> None:
        shown = database.dsn_for_display
        reason = transaction_pooler_reason(database.dsn)
        if reason:
            self.report("fail", "not a transaction pooler", f"DATABASE_URL {reason}")
            return
        self.report("ok", "not a transaction pooler", "LISTEN can work through this DSN")
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(database.dsn, autocommit=True,
                                                connect_timeout=int(CHECK_TIMEOUT_S)),
                CHECK_TIMEOUT_S + 1,
            )
        except (psycopg.Error, OSError, TimeoutError) as error:
            self.report("fail", "database reachable",
                        f"{shown}: {_line(error)} -> check host, port, credentials, firewall")
            return
        async with conn:
            version = conn.info.parameter_status("server_version") or "?"
            self.report("ok", "database reachable", f"PostgreSQL {version} at {shown}")
            try:
                missing = await pending_migrations(database.dsn)
            except psycopg.Error as error:
                self.report("fail", "migrations current", _line(error))
                missing = []
            else:
                if missing:
                    self.report("fail", "migrations current",
                                f"not applied: {', '.join(missing)} -> run "
                                "`evolution-listener migrate` with an owner's DSN")
                else:
                    self.report("ok", "migrations current", "all applied")
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
        client = EvolutionClient(settings.evolution_api_base_url,
                                 settings.evolution_api_key.get_secret_value(),
                                 timeout_s=min(settings.http_timeout_s, CHECK_TIMEOUT_S))
        async with client:
            try:
                info = await client.server_info()
            except EvolutionError as error:
                self.report("fail", "Evolution API reachable",
                            f"{settings.evolution_api_base_url}: {_line(error)} -> check "
                            "EVOLUTION_API_BASE_URL and that the server is up")
                return
            self.report("ok", "Evolution API reachable",
                        f"{settings.evolution_api_base_url} (version {info.version or '?'})")
            try:
                await client.check_key()
            except AuthError:
                self.report("fail", "Evolution API key",
                            "rejected (401) -> set EVOLUTION_API_KEY to the server's "
                            "AUTHENTICATION_API_KEY")
                return
            except EvolutionError as error:
                self.report("fail", "Evolution API key", _line(error))
                return
            self.report("ok", "Evolution API key", "accepted")

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


async def run_doctor(env: Mapping[str, str], out: TextIO | None = None) -> int:
    return await Doctor(env, out or sys.stdout).run()
