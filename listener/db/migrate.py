"""The migration runner: ordered plain-SQL files, each in its own transaction, under a lock.

The files ship inside the distribution (`listener/sql`), so an installed wheel can migrate;
in a checkout they are read from the repository's `sql/`. Two replicas starting together
serialise on a session advisory lock; the first applies, the second finds nothing to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from listener.db import queries

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
    packaged = resources.files("listener") / "sql"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "sql"
    if checkout.is_dir():
        return checkout
    raise MigrationError("no sql/ directory found next to the package: broken installation")


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
        finally:
            await conn.execute(queries.MIGRATION_UNLOCK, {"key": queries.MIGRATION_LOCK_KEY})
    return MigrationReport(applied=applied, already=already, changed=changed)


async def pending_migrations(dsn: str) -> list[str]:
    """Files not yet applied to this database (for `doctor`)."""
    migrations = load_migrations()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(queries.MIGRATIONS_TABLE_EXISTS)
        row = await cursor.fetchone()
        if row is None or not row[0]:
            return [m.filename for m in migrations]
        cursor = await conn.execute(queries.SELECT_APPLIED_MIGRATIONS)
        recorded = {r[0] for r in await cursor.fetchall()}
    return [m.filename for m in migrations if m.version not in recorded]
