"""A database prepared the way a Supabase project is, then migrated: signups through
auth.users are queued and notified; RLS and grants hold for anon, authenticated and the
service's own role; with and without Supabase's old automatic default grants."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from listener.db import queries
from listener.db.migrate import migrate
from tests.pg import (
    SERVICE_LOGIN_PASSWORD,
    SERVICE_LOGIN_ROLE,
    PgServer,
    drop_database,
    ensure_service_login_role,
    with_database,
)

SUPABASE_ROLES = """
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_auth_admin') THEN
    CREATE ROLE supabase_auth_admin NOINHERIT CREATEROLE LOGIN; END IF;
END $$;
"""

# Supabase's auth schema and the user-management starter's profiles + handle_new_user().
SUPABASE_PROJECT = """
CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
CREATE TABLE auth.users (
  id uuid PRIMARY KEY,
  email text,
  raw_user_meta_data jsonb,
  created_at timestamptz DEFAULT now()
);
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  SELECT nullif(coalesce(current_setting('request.jwt.claim.sub', true),
                         (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')), '')::uuid
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

CREATE TABLE public.profiles (
  id uuid NOT NULL REFERENCES auth.users ON DELETE CASCADE,
  updated_at timestamptz,
  username text UNIQUE,
  full_name text,
  avatar_url text,
  website text,
  PRIMARY KEY (id)
);
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Public profiles are viewable by everyone." ON public.profiles
  FOR SELECT USING (true);

CREATE FUNCTION public.handle_new_user()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
  INSERT INTO public.profiles (id, full_name, avatar_url)
  VALUES (new.id, new.raw_user_meta_data->>'full_name', new.raw_user_meta_data->>'avatar_url');
  RETURN new;
END;
$$;
CREATE TRIGGER on_auth_user_created
  AFTER INSERT ON auth.users
  FOR EACH ROW EXECUTE PROCEDURE public.handle_new_user();
"""

OLD_DEFAULT_GRANTS = "\n".join(
    f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON {kind} "
    "TO anon, authenticated, service_role;"
    for kind in ("TABLES", "FUNCTIONS", "SEQUENCES")
)


@pytest.fixture(params=["default-grants", "no-default-grants"])
def supabase_db(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[str]:
    name = f"el_supa_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(SUPABASE_ROLES)
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(pg_server.admin_dsn, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            if request.param == "default-grants":
                conn.execute(OLD_DEFAULT_GRANTS)
            conn.execute(SUPABASE_PROJECT)
        asyncio.run(migrate(dsn))
        ensure_service_login_role(pg_server.admin_dsn)
        yield dsn
    finally:
        drop_database(pg_server.admin_dsn, name)


def _signup(conn: psycopg.Connection[tuple[object, ...]], user_id: uuid.UUID) -> None:
    conn.execute("SET ROLE supabase_auth_admin")
    conn.execute(
        "INSERT INTO auth.users (id, email, raw_user_meta_data) VALUES (%s, %s, %s)",
        (user_id, f"{user_id}@example.test", json.dumps({"full_name": "Ana"})),
    )
    conn.execute("RESET ROLE")


def test_signup_through_auth_users_is_queued_and_notified(supabase_db: str) -> None:
    user_id = uuid.uuid4()
    with psycopg.connect(supabase_db, autocommit=True) as listener, \
            psycopg.connect(supabase_db) as auth:
        listener.execute(queries.LISTEN)
        _signup(auth, user_id)
        auth.commit()
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=1.0, stop_after=1)]
        assert [n["user_id"] for n in notes] == [str(user_id)]
        row = listener.execute(
            "SELECT status FROM evolution_instance_creation_queue WHERE user_id = %s", (user_id,)
        ).fetchone()
        assert row == ("pending",)


def _as(
    dsn: str, role: str, sub: uuid.UUID | None = None
) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"SET ROLE {role}")
    if sub is not None:
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, false)", (str(sub),))
    return conn


def _seed_instances(dsn: str) -> tuple[uuid.UUID, uuid.UUID]:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for user_id in (mine, theirs):
            _signup(conn, user_id)
            conn.execute(
                "INSERT INTO evolution_instances (user_id, instance_name, integration, "
                "webhook_url, webhook_events, instance_token) "
                "VALUES (%s, %s, 'WHATSAPP-BAILEYS', 'https://x/hook', ARRAY['SEND_MESSAGE'], "
                "'secret-token')",
                (user_id, f"evo-{user_id}"),
            )
    return mine, theirs


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_queue_is_not_readable_by_api_roles(supabase_db: str, role: str) -> None:
    _seed_instances(supabase_db)
    with _as(supabase_db, role, uuid.uuid4()) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM evolution_instance_creation_queue")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE evolution_instance_creation_queue SET status = 'failed'")


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_send_queue_notifications(supabase_db: str, role: str) -> None:
    """0003's payload function is not an RPC that wakes every replica at will."""
    with _as(supabase_db, role, uuid.uuid4()) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT public.evolution_listener_notify("
                     "'evolution_instance_creation_queue', 1, gen_random_uuid())")


def test_service_role_manual_retry_notifies_the_listener(supabase_db: str) -> None:
    """The seed's manual retry from the dashboard (service_role) still fires the trigger,
    whose NOTIFY now goes through 0003's function."""
    mine, _ = _seed_instances(supabase_db)
    with psycopg.connect(supabase_db, autocommit=True) as admin:
        admin.execute("UPDATE evolution_instance_creation_queue SET status = 'failed' "
                      "WHERE user_id = %s", (mine,))
    with psycopg.connect(supabase_db, autocommit=True) as listener, \
            _as(supabase_db, "service_role") as dashboard:
        listener.execute(queries.LISTEN)
        dashboard.execute("UPDATE evolution_instance_creation_queue SET status = 'pending', "
                          "retry_count = 0 WHERE user_id = %s", (mine,))
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=1.0, stop_after=1)]
    assert [n["user_id"] for n in notes] == [str(mine)]


def test_anon_sees_no_instance(supabase_db: str) -> None:
    _seed_instances(supabase_db)
    with _as(supabase_db, "anon") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT user_id FROM evolution_instances")


def test_authenticated_reads_its_own_instance_but_never_the_token(supabase_db: str) -> None:
    mine, _theirs = _seed_instances(supabase_db)
    with _as(supabase_db, "authenticated", mine) as conn:
        rows = conn.execute("SELECT user_id, instance_name FROM evolution_instances").fetchall()
        assert rows == [(mine, f"evo-{mine}")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT instance_token FROM evolution_instances")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM evolution_instances")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE evolution_instances SET webhook_url = 'https://evil'")


def test_service_role_can_do_its_work_and_nothing_more(supabase_db: str) -> None:
    mine, _ = _seed_instances(supabase_db)
    service_dsn = with_database(
        supabase_db, supabase_db.rsplit("/", 1)[1], SERVICE_LOGIN_ROLE, SERVICE_LOGIN_PASSWORD
    )
    with psycopg.connect(service_dsn, autocommit=True) as conn:
        # Its work: read and move queue rows, write instance rows, notify, listen.
        assert conn.execute(
            "SELECT count(*) FROM evolution_instance_creation_queue"
        ).fetchone() == (2,)
        conn.execute(
            "UPDATE evolution_instance_creation_queue SET status = 'processing' WHERE user_id = %s",
            (mine,),
        )
        conn.execute(
            "UPDATE evolution_instances SET instance_token = 'rotated' WHERE user_id = %s", (mine,)
        )
        conn.execute(queries.LISTEN)
        conn.execute("SELECT pg_notify('evolution_instance_creation_queue', '{}')")
        # 0005: the deletion job removes a deleted user's row; reconcile reads profile ids.
        conn.execute("SELECT id FROM public.profiles")
        conn.execute("DELETE FROM evolution_instances WHERE user_id = %s", (uuid.uuid4(),))
        # Nothing more.
        forbidden = [
            "SELECT * FROM auth.users",
            "SELECT * FROM public.profiles",
            "INSERT INTO public.profiles (id) VALUES (gen_random_uuid())",
            "DELETE FROM public.profiles",
            "TRUNCATE evolution_instance_creation_queue",
            "DROP TABLE evolution_instances",
            "ALTER TABLE evolution_instance_creation_queue DISABLE ROW LEVEL SECURITY",
            "CREATE TABLE public.intruder (id int)",
        ]
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
