"""Which schema objects prove a migration was applied, read from the migration's own SQL.

Why: Supabase projects usually apply SQL through `supabase/migrations/` (or psql), so the
runner's table `evolution_listener_migrations` never hears of it; `doctor` must recognise the
schema itself. Each migration's markers are the objects it creates (tables, columns, indexes,
functions, triggers, policies, roles), minus those a later migration drops again. Objects
created inside string literals (EXECUTE '...' of a conditional branch) are not markers, since
they may rightly be absent.

Pure: text in, markers out; the database check is one statement in queries.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Marker", "markers_by_version", "objects_created", "objects_dropped"]

_IDENT = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QNAME = rf"{_IDENT}(?:\.{_IDENT})?"


@dataclass(frozen=True, order=True)
class Marker:
    """One object: `kind` in table, index, column, function, trigger, policy, role; `name`
    schema-qualified where the kind has a schema; `parent` the table of a trigger, policy or
    column, else ''."""

    kind: str
    name: str
    parent: str = ""


def _unquote(name: str) -> str:
    return name.replace('"', "")


def _qualified(name: str, default_schema: str = "public") -> str:
    name = _unquote(name)
    return name if "." in name else f"{default_schema}.{name}"


def _schema_of(qualified: str) -> str:
    return qualified.split(".", 1)[0]


def strip_comments_and_literals(sql: str) -> str:
    """Remove `--` comments, `/* */` comments and single-quoted literals ('' escapes
    included); dollar-quoted bodies stay (a DO block's CREATE ROLE is a real marker)."""
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    sql = re.sub(r"--[^\n]*", " ", sql)
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


_TABLE = re.compile(rf"(?i)\bCREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?({_QNAME})")
_INDEX = re.compile(
    rf"(?i)\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"({_IDENT})\s+ON\s+(?:ONLY\s+)?({_QNAME})"
)
_FUNCTION = re.compile(rf"(?i)\bCREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+({_QNAME})\s*\(")
_TRIGGER = re.compile(
    rf"(?i)\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+({_IDENT})\s+"
    rf"(?:BEFORE|AFTER|INSTEAD\s+OF)\b.*?\bON\s+({_QNAME})",
    re.S,
)
_POLICY = re.compile(rf"(?i)\bCREATE\s+POLICY\s+({_IDENT})\s+ON\s+({_QNAME})")
_ROLE = re.compile(rf"(?i)\bCREATE\s+ROLE\s+({_IDENT})")
_ALTER_ADD = re.compile(
    rf"(?i)\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_QNAME})\s+(ADD\s+COLUMN\b[^;]*);"
)
_ADD_COLUMN = re.compile(rf"(?i)\bADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?({_IDENT})")

_DROP = re.compile(
    rf"(?i)\bDROP\s+(TABLE|INDEX|FUNCTION|TRIGGER|POLICY|ROLE)\s+(?:IF\s+EXISTS\s+)?({_QNAME})"
    rf"(?:\s*\([^)]*\))?(?:\s+ON\s+({_QNAME}))?"
)
_DROP_COLUMN = re.compile(
    rf"(?i)\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_QNAME})\s+DROP\s+COLUMN\s+"
    rf"(?:IF\s+EXISTS\s+)?({_IDENT})"
)


def objects_created(sql: str) -> set[Marker]:
    """Every object the SQL creates outside string literals."""
    text = strip_comments_and_literals(sql)
    found: set[Marker] = set()
    for match in _TABLE.finditer(text):
        found.add(Marker("table", _qualified(match.group(1))))
    for match in _INDEX.finditer(text):
        table = _qualified(match.group(2))
        found.add(Marker("index", f"{_schema_of(table)}.{_unquote(match.group(1))}"))
    for match in _FUNCTION.finditer(text):
        found.add(Marker("function", _qualified(match.group(1))))
    for match in _TRIGGER.finditer(text):
        found.add(Marker("trigger", _unquote(match.group(1)), _qualified(match.group(2))))
    for match in _POLICY.finditer(text):
        found.add(Marker("policy", _unquote(match.group(1)), _qualified(match.group(2))))
    for match in _ROLE.finditer(text):
        found.add(Marker("role", _unquote(match.group(1))))
    for match in _ALTER_ADD.finditer(text):
        table = _qualified(match.group(1))
        for column in _ADD_COLUMN.finditer(match.group(2)):
            found.add(Marker("column", _unquote(column.group(1)), table))
    return found


def objects_dropped(sql: str) -> set[Marker]:
    """Every object the SQL drops (a `DROP ... IF EXISTS` before a re-create included)."""
    text = strip_comments_and_literals(sql)
    found: set[Marker] = set()
    for match in _DROP.finditer(text):
        kind = match.group(1).lower()
        name, parent = match.group(2), match.group(3)
        if kind in ("trigger", "policy"):
            found.add(Marker(kind, _unquote(name), _qualified(parent) if parent else ""))
        elif kind == "role":
            found.add(Marker(kind, _unquote(name)))
        elif kind == "index":
            found.add(Marker(kind, _qualified(name)))
        else:
            found.add(Marker(kind, _qualified(name)))
    for match in _DROP_COLUMN.finditer(text):
        found.add(Marker("column", _unquote(match.group(2)), _qualified(match.group(1))))
    return found


def markers_by_version(migrations: Sequence[tuple[str, str]]) -> dict[str, list[Marker]]:
    """For (version, sql) in order: the objects that must exist if that version was applied
    (its creations that no later migration drops without creating again)."""
    created = [(version, objects_created(sql)) for version, sql in migrations]
    net_drops = [objects_dropped(sql) - objects_created(sql) for _, sql in migrations]
    result: dict[str, list[Marker]] = {}
    for index, (version, objects) in enumerate(created):
        gone: set[Marker] = set().union(*net_drops[index + 1:]) if index + 1 < len(net_drops) \
            else set()
        result[version] = sorted(objects - gone)
    return result
