"""The migration runner: ordered plain-SQL files, each in its own transaction, under a lock.

The files ship inside the distribution (`listener/sql`), so an installed wheel can migrate;
in a checkout they are read from the repository's `sql/`. Two replicas starting together
serialise on a session advisory lock; the first applies, the second finds nothing to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from listener.db import queries
from listener.db.markers import markers_by_version
from listener.shipped import ShippedFilesMissing, shipped_directory

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """A migration file failed; nothing of it was applied."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already: list[str]
    changed: list[str]


def sql_directory() -> Path:
    """Where the .sql files are: inside the installed package, else the checkout's sql/."""
    try:
        return shipped_directory("sql")
    except ShippedFilesMissing as error:
        raise MigrationError(str(error)) from None


def load_migrations(directory: Path | None = None) -> list[Migration]:
    folder = directory or sql_directory()
    found = []
    for path in sorted(folder.iterdir()):
        match = _FILE_RE.match(path.name)
        if match:
            found.append(Migration(match.group(1), match.group(2), path.read_text("utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number in {folder}")
    return found


async def migrate(dsn: str, directory: Path | None = None) -> MigrationReport:
    """Apply every migration not yet recorded; a second run is a no-op."""
    migrations = load_migrations(directory)
    applied: list[str] = []
    already: list[str] = []
    changed: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(queries.MIGRATION_LOCK, {"key": queries.MIGRATION_LOCK_KEY})
        try:
            await conn.execute(queries.CREATE_MIGRATIONS_TABLE)
            cursor = await conn.execute(queries.SELECT_APPLIED_MIGRATIONS)
            recorded = {row[0]: row[1] for row in await cursor.fetchall()}
            for migration in migrations:
                if migration.version in recorded:
                    already.append(migration.filename)
                    if recorded[migration.version] != migration.checksum:
                        changed.append(migration.filename)
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql.encode())
                        await conn.execute(
                            queries.RECORD_MIGRATION,
                            {
                                "version": migration.version,
                                "name": migration.name,
                                "checksum": migration.checksum,
                            },
                        )
                except psycopg.Error as error:
                    detail = " ".join(str(error).split())
                    raise MigrationError(
                        f"{migration.filename} failed and was rolled back: {detail}"
                    ) from error
                applied.append(migration.filename)
            await conn.execute(queries.HARDEN_MIGRATIONS_TABLE)
        finally:
            await conn.execute(queries.MIGRATION_UNLOCK, {"key": queries.MIGRATION_LOCK_KEY})
    return MigrationReport(applied=applied, already=already, changed=changed)


@dataclass(frozen=True)
class MigrationState:
    """One migration as doctor sees it: recorded by the runner, recognised from the schema
    (applied through supabase/migrations or psql), or missing (`missing` names what)."""

    filename: str
    recorded: bool
    missing: tuple[str, ...]

    @property
    def applied(self) -> bool:
        return self.recorded or not self.missing


async def migration_states(dsn: str) -> list[MigrationState]:
    """Every shipped migration's state on this database (catalog reads only)."""
    migrations = load_migrations()
    markers = markers_by_version([(m.version, m.sql) for m in migrations])
    states: list[MigrationState] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        recorded: set[str] = set()
        cursor = await conn.execute(queries.MIGRATIONS_TABLE_EXISTS)
        row = await cursor.fetchone()
        if row is not None and row[0]:
            cursor = await conn.execute(queries.SELECT_APPLIED_MIGRATIONS)
            recorded = {r[0] for r in await cursor.fetchall()}
        for migration in migrations:
            wanted = markers[migration.version]
            missing: tuple[str, ...] = ("no marker object to recognise it by",)
            if wanted:
                cursor = await conn.execute(queries.MISSING_MARKERS, {
                    "kinds": [m.kind for m in wanted],
                    "names": [m.name for m in wanted],
                    "parents": [m.parent for m in wanted],
                })
                missing = tuple(_describe(r[0], r[1], r[2]) for r in await cursor.fetchall())
            states.append(MigrationState(migration.filename,
                                         migration.version in recorded, missing))
    return states


def _describe(kind: str, name: str, parent: str) -> str:
    return f"{kind} {name}" + (f" on {parent}" if parent else "")


async def pending_migrations(dsn: str) -> list[str]:
    """Files neither recorded by the runner nor recognisable from the schema."""
    return [state.filename for state in await migration_states(dsn) if not state.applied]


# --- supabase/migrations export ----------------------------------------------------------

SUPABASE_NAME_RE = re.compile(r"^(\d{14})_evolution_listener_(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class ExportPlan:
    """What `export-migrations` does: files to write (name, text) and ones already there."""

    write: list[tuple[str, str]]
    present: list[str]
    differs: list[str]


def plan_supabase_export(migrations: list[Migration], existing: list[str],
                         existing_text: dict[str, str], now: datetime) -> ExportPlan:
    """Pure: Supabase names (`YYYYMMDDHHMMSS_evolution_listener_NNNN_name.sql`) for the
    migrations not yet in the folder, one second apart from `now` so they sort in order;
    a migration already exported (under any timestamp) is never written twice, since
    Supabase would apply it again."""
    exported = {}
    for name in existing:
        match = SUPABASE_NAME_RE.match(name)
        if match:
            exported[match.group(2)] = name
    newest = max((SUPABASE_NAME_RE.match(n).group(1)  # type: ignore[union-attr]
                  for n in exported.values()), default="")
    start = now
    if newest and newest >= now.strftime("%Y%m%d%H%M%S"):
        start = datetime.strptime(newest, "%Y%m%d%H%M%S") + timedelta(seconds=1)
    write: list[tuple[str, str]] = []
    present: list[str] = []
    differs: list[str] = []
    for migration in migrations:
        if migration.version in exported:
            name = exported[migration.version]
            present.append(name)
            if existing_text.get(name, migration.sql) != migration.sql:
                differs.append(name)
            continue
        stamp = (start + timedelta(seconds=len(write))).strftime("%Y%m%d%H%M%S")
        write.append((f"{stamp}_evolution_listener_{migration.filename}", migration.sql))
    return ExportPlan(write, present, differs)


def export_supabase(directory: Path, now: datetime) -> ExportPlan:
    """Write the shipped migrations into a `supabase/migrations/` folder (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in directory.iterdir() if SUPABASE_NAME_RE.match(p.name))
    texts = {name: (directory / name).read_text("utf-8") for name in names}
    plan = plan_supabase_export(load_migrations(), names, texts, now)
    for name, text in plan.write:
        (directory / name).write_text(text, "utf-8")
    return plan
