"""Migrations applied the Supabase way (the files of `export-migrations`, run by psql or the
Supabase CLI, never by the runner) are recognised as applied; the runner's own table is
closed to the Data API roles."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from listener.db.migrate import export_supabase, migrate, migration_states
from listener.doctor import run_doctor
from tests.integration.test_supabase import SUPABASE_ROLES
from tests.pg import PgServer, drop_database, with_database


@pytest.fixture
def empty_db(pg_server: PgServer) -> Iterator[str]:
    name = "el_ops_" + os.urandom(5).hex()
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_server.admin_dsn, name)
    finally:
        drop_database(pg_server.admin_dsn, name)


def _apply_like_supabase(dsn: str, folder: Path) -> list[str]:
    """What `supabase db push` / psql do: every file, in name order, no runner table."""
    names = sorted(p.name for p in folder.iterdir())
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            with conn.transaction():
                conn.execute((folder / name).read_text().encode())
    return names


def _doctor_lines(dsn: str) -> list[str]:
    out = io.StringIO()
    asyncio.run(run_doctor({"DATABASE_URL": dsn}, out))
    return out.getvalue().splitlines()


def test_doctor_reports_migrations_applied_through_supabase_migrations_as_current(
    empty_db: str, tmp_path: Path
) -> None:
    folder = tmp_path / "supabase" / "migrations"
    plan = export_supabase(folder, datetime.now(UTC))
    assert len(plan.write) >= 2
    names = _apply_like_supabase(empty_db, folder)
    assert all("_evolution_listener_" in n for n in names)

    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('public.evolution_listener_migrations')"
                            ).fetchone() == (None,)
    states = asyncio.run(migration_states(empty_db))
    assert states and all(s.applied and not s.recorded for s in states)
    [line] = [x for x in _doctor_lines(empty_db) if "migrations current" in x]
    assert line.startswith("ok") and "recognised from the schema" in line

    # Take one object away: that migration is reported, naming what is missing.
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("DROP TRIGGER on_profile_created_create_evolution_instance "
                     "ON public.profiles")
    [line] = [x for x in _doctor_lines(empty_db) if "migrations current" in x]
    assert line.startswith("fail") and "0001_queue_and_instances.sql" in line
    assert "on_profile_created_create_evolution_instance" in line


def test_doctor_reports_an_empty_database_as_pending(empty_db: str) -> None:
    [line] = [x for x in _doctor_lines(empty_db) if "migrations current" in x]
    assert line.startswith("fail") and "0001" in line and "0002" in line


def test_runner_table_gets_rls_and_no_grants_for_api_roles_even_when_it_existed(
    empty_db: str
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SUPABASE_ROLES)
        # A table left by the previous release, with Supabase's old automatic grants.
        conn.execute("""
            CREATE TABLE public.evolution_listener_migrations (
                version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now());
            GRANT ALL ON public.evolution_listener_migrations TO PUBLIC, anon, authenticated;
        """)
    asyncio.run(migrate(empty_db))
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute("SELECT relrowsecurity FROM pg_class "
                            "WHERE oid = 'public.evolution_listener_migrations'::regclass"
                            ).fetchone() == (True,)
        for role in ("anon", "authenticated", "public"):
            assert conn.execute(
                "SELECT has_table_privilege(%s, 'public.evolution_listener_migrations', "
                "'SELECT') OR has_table_privilege(%s, 'public.evolution_listener_migrations', "
                "'INSERT')", (role, role)).fetchone() == (False,), role
        # The service's role still reads it (0002's grant, the runner's policy).
        conn.execute("SET ROLE evolution_listener")
        count = conn.execute("SELECT count(*) FROM public.evolution_listener_migrations"
                             ).fetchone()
        conn.execute("RESET ROLE")
        assert count is not None and count[0] >= 2
    # A second run keeps it so and does not fail on the existing policy.
    asyncio.run(migrate(empty_db))
