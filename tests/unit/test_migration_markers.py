"""Recognising a migration from the schema (its marker objects) and naming files for
supabase/migrations."""

from __future__ import annotations

from datetime import datetime

import pytest

from listener.db.markers import Marker, markers_by_version, objects_created, objects_dropped
from listener.db.migrate import Migration, MigrationState, load_migrations, plan_supabase_export
from listener.doctor import migrations_line

pytestmark = pytest.mark.unit


def test_markers_of_the_shipped_migrations() -> None:
    markers = markers_by_version([(m.version, m.sql) for m in load_migrations()])
    assert Marker("table", "public.evolution_instance_creation_queue") in markers["0001"]
    assert Marker("trigger", "on_profile_created_create_evolution_instance",
                  "public.profiles") in markers["0001"]
    assert Marker("column", "reclaim_count",
                  "public.evolution_instance_creation_queue") in markers["0001"]
    assert Marker("role", "evolution_listener") in markers["0002"]
    # Conditional (EXECUTE '...' only where `authenticated` exists): not a marker.
    assert not [m for m in markers["0002"] if m.name == "evolution_instances_owner_read"]
    # A comment's example (CREATE ROLE evolution_listener_svc ...) is not a marker either.
    assert Marker("role", "evolution_listener_svc") not in markers["0002"]
    for version, found in markers.items():
        assert found, f"migration {version} has no marker doctor could recognise it by"


def test_objects_created_and_dropped() -> None:
    sql = """
    CREATE TABLE IF NOT EXISTS "public"."t" (id int);
    CREATE UNIQUE INDEX IF NOT EXISTS t_idx ON public.t (id);
    ALTER TABLE public.t ADD COLUMN IF NOT EXISTS a int, ADD COLUMN b text;
    CREATE OR REPLACE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
    CREATE TRIGGER tr AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION f();
    CREATE POLICY p ON public.t FOR ALL TO x USING (true);
    -- CREATE TABLE commented_out (id int);
    SELECT 'CREATE TABLE in_a_string (id int)';
    """
    assert objects_created(sql) == {
        Marker("table", "public.t"), Marker("index", "public.t_idx"),
        Marker("column", "a", "public.t"), Marker("column", "b", "public.t"),
        Marker("function", "public.f"), Marker("trigger", "tr", "public.t"),
        Marker("policy", "p", "public.t"),
    }
    dropped = objects_dropped("DROP TRIGGER IF EXISTS tr ON public.t; DROP FUNCTION f(); "
                              "ALTER TABLE public.t DROP COLUMN IF EXISTS a;")
    assert dropped == {Marker("trigger", "tr", "public.t"), Marker("function", "public.f"),
                       Marker("column", "a", "public.t")}


def test_an_object_a_later_migration_drops_is_no_marker_of_the_earlier_one() -> None:
    markers = markers_by_version([
        ("0001", "CREATE TABLE public.a (id int); CREATE TABLE public.b (id int);"),
        ("0002", "DROP TABLE IF EXISTS public.b;"),
        # Drop and create again in one file (the usual idempotent form): still a marker.
        ("0003", "DROP TRIGGER IF EXISTS tr ON public.a; "
                 "CREATE TRIGGER tr AFTER INSERT ON public.a FOR EACH ROW EXECUTE FUNCTION g();"),
    ])
    assert markers["0001"] == [Marker("table", "public.a")]
    assert markers["0003"] == [Marker("trigger", "tr", "public.a")]


def _migrations() -> list[Migration]:
    return [Migration("0001", "one", "SELECT 1;"), Migration("0002", "two", "SELECT 2;")]


def test_supabase_names_are_timestamped_in_order() -> None:
    plan = plan_supabase_export(_migrations(), [], {}, datetime(2026, 12, 3, 8, 0, 59))
    assert [name for name, _ in plan.write] == [
        "20261203080059_evolution_listener_0001_one.sql",
        "20261203080100_evolution_listener_0002_two.sql",
    ]
    assert plan.write[0][1] == "SELECT 1;"


def test_an_exported_migration_is_not_written_again_and_new_ones_sort_after() -> None:
    existing = "20300101000000_evolution_listener_0001_one.sql"
    plan = plan_supabase_export(_migrations(), [existing, "20200101000000_app_schema.sql"],
                                {existing: "SELECT 1; -- edited"}, datetime(2026, 12, 3))
    assert plan.present == [existing] and plan.differs == [existing]
    assert [name for name, _ in plan.write] == [
        "20300101000001_evolution_listener_0002_two.sql"]


def test_migrations_line() -> None:
    recorded = MigrationState("0001_a.sql", recorded=True, missing=())
    recognised = MigrationState("0002_b.sql", recorded=False, missing=())
    absent = MigrationState("0003_c.sql", recorded=False, missing=("table public.x",))
    assert migrations_line([recorded]) == ("ok", "all 1 applied")
    level, text = migrations_line([recorded, recognised])
    assert level == "ok" and "1 recognised from the schema" in text
    level, text = migrations_line([recorded, recognised, absent])
    assert level == "fail" and "0003_c.sql" in text and "table public.x" in text
