"""The Evolution API servers the service places instances on, read once at start.

`EVOLUTION_API_SERVERS` names a TOML file with one `[servers.NAME]` table per server; each
names the environment variable holding its key (`api_key_env`), so the keys stay in the
EnvironmentFile and the TOML file carries no secret. Without the file, the single server of
`EVOLUTION_API_BASE_URL`/`EVOLUTION_API_KEY` is named `default`, with no capacity limit.

A bad file stops the service with one line naming the file and the field; no key value
ever appears in an error.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import SecretStr

SERVERS_ENV: Final = "EVOLUTION_API_SERVERS"
DEFAULT_SERVER: Final = "default"
_NAME_RE: Final = re.compile(r"^[a-z0-9_-]{1,63}$")
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SERVER_KEYS: Final = ("base_url", "api_key_env", "capacity", "state")


class ServerState(StrEnum):
    ACTIVE = "active"  # takes new placements
    DRAINING = "draining"  # keeps serving what is placed there, takes no new placements


@dataclass(frozen=True)
class ServerSpec:
    """One Evolution API server. `capacity` None = no limit."""

    name: str
    base_url: str
    api_key: SecretStr
    capacity: int | None = None
    state: ServerState = ServerState.ACTIVE
    api_key_env: str | None = None  # None for the single server of EVOLUTION_API_KEY

    @property
    def accepts_placements(self) -> bool:
        return self.state is ServerState.ACTIVE


class ServersFileError(ValueError):
    """A problem in the servers file, phrased as the one line an operator reads."""


def _shown(text: str) -> str:
    """A name from the file, quoted when it could break the one-line message."""
    return text if _NAME_RE.match(text) or _ENV_NAME_RE.match(text) else json.dumps(text)


def check_base_url(value: str) -> str:
    """An http(s) URL with a host and no credentials in it; the trailing '/' dropped."""
    try:
        parts = urlsplit(value.strip())
        hostname = parts.hostname
    except ValueError:
        hostname = None
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not hostname:
        raise ValueError("must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (the key goes in api_key_env's variable)")
    return value.strip().rstrip("/")


def default_server(base_url: str, api_key: SecretStr) -> ServerSpec:
    """The one server of EVOLUTION_API_BASE_URL/EVOLUTION_API_KEY (both already validated)."""
    return ServerSpec(DEFAULT_SERVER, base_url, api_key)


def load_servers_file(
    path: str, env: Mapping[str, str], *, require_keys: bool = True
) -> tuple[ServerSpec, ...]:
    """Parse and validate the servers file; raise ServersFileError (one line) on any fault.

    `require_keys=False` is for commands that only read names and capacities (`stats`):
    a key variable that is not set then gives an empty key instead of an error."""
    prefix = f"{SERVERS_ENV}={path}"
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ServersFileError(f"{prefix}: cannot read the file ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ServersFileError(f"{prefix}: not valid TOML: {error}") from None
    try:
        return _parse_document(document, env, require_keys)
    except _FieldError as error:
        raise ServersFileError(f"{prefix}: {error.field}: {error.problem}") from None


def load_servers(env: Mapping[str, str]) -> tuple[ServerSpec, ...]:
    """The fleet from an environment: the servers file when set, else the single server."""
    path = env.get(SERVERS_ENV, "").strip()
    if path:
        return load_servers_file(path, env)
    base_url = env.get("EVOLUTION_API_BASE_URL", "")
    key = env.get("EVOLUTION_API_KEY", "").strip()
    try:
        url = check_base_url(base_url)
    except ValueError as error:
        raise ServersFileError(f"EVOLUTION_API_BASE_URL: {error}") from None
    if not key:
        raise ServersFileError("EVOLUTION_API_KEY: is required but not set")
    return (default_server(url, SecretStr(key)),)


class _FieldError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _parse_document(
    document: Mapping[str, Any], env: Mapping[str, str], require_keys: bool
) -> tuple[ServerSpec, ...]:
    for key in document:
        if key != "servers":
            raise _FieldError(_shown(key), "unknown key (the file holds [servers.NAME] tables)")
    servers = document.get("servers")
    if servers is None:
        raise _FieldError("servers", "at least one [servers.NAME] table is required")
    if not isinstance(servers, dict):
        raise _FieldError("servers", "must be tables: [servers.NAME]")
    if not servers:
        raise _FieldError("servers", "at least one [servers.NAME] table is required")
    specs = tuple(_parse_server(name, table, env, require_keys)
                  for name, table in servers.items())
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.base_url in seen:
            raise _FieldError(f"servers.{spec.name}.base_url",
                              f"same URL as servers.{seen[spec.base_url]} (one table per server)")
        seen[spec.base_url] = spec.name
    return specs


def _parse_server(
    name: str, table: object, env: Mapping[str, str], require_keys: bool
) -> ServerSpec:
    where = f"servers.{_shown(name)}"
    if not _NAME_RE.match(name):
        raise _FieldError(where, "a server name is 1 to 63 characters of a-z, 0-9, '_' or '-'")
    if not isinstance(table, dict):
        raise _FieldError(where, "must be a table with base_url and api_key_env")
    for key in table:
        if key not in _SERVER_KEYS:
            raise _FieldError(f"{where}.{_shown(key)}",
                              f"unknown key (allowed: {', '.join(_SERVER_KEYS)})")
    return ServerSpec(
        name=name,
        base_url=_base_url(where, table),
        api_key=_api_key(where, table, env, require_keys),
        capacity=_capacity(where, table),
        state=_state(where, table),
        api_key_env=str(table["api_key_env"]),
    )


def _base_url(where: str, table: Mapping[str, object]) -> str:
    value = table.get("base_url")
    if value is None:
        raise _FieldError(f"{where}.base_url", "is required")
    if not isinstance(value, str):
        raise _FieldError(f"{where}.base_url", "must be a string")
    try:
        return check_base_url(value)
    except ValueError as error:
        raise _FieldError(f"{where}.base_url", str(error)) from None


def _api_key(
    where: str, table: Mapping[str, object], env: Mapping[str, str], require_keys: bool
) -> SecretStr:
    field = f"{where}.api_key_env"
    variable = table.get("api_key_env")
    if variable is None:
        raise _FieldError(field, "is required (the name of the variable holding the key)")
    if not isinstance(variable, str) or not _ENV_NAME_RE.match(variable):
        raise _FieldError(field, "must be the name of an environment variable, e.g. EVO_A_KEY")
    key = env.get(variable, "").strip()
    if not key and require_keys:
        raise _FieldError(field, f"the variable {variable} is not set or empty")
    return SecretStr(key)


def _capacity(where: str, table: Mapping[str, object]) -> int | None:
    value = table.get("capacity")
    if value is None:
        return None
    # bool is an int in Python; `capacity = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _FieldError(f"{where}.capacity", "must be a positive integer")
    return value


def _state(where: str, table: Mapping[str, object]) -> ServerState:
    value = table.get("state", ServerState.ACTIVE.value)
    if not isinstance(value, str) or value not in {s.value for s in ServerState}:
        raise _FieldError(f"{where}.state", "must be 'active' or 'draining'")
    return ServerState(value)
