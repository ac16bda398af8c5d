"""A servers file (EVOLUTION_API_SERVERS, SPEC §10) for dev runs: tests, demo and bench run
several simulators as several Evolution servers and write this file for the service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DevServer:
    name: str
    base_url: str
    api_key: str
    capacity: int | None = None
    state: str = "active"

    @property
    def key_env(self) -> str:
        """The variable holding this server's key (the file names it, never the key)."""
        return f"EVO_{self.name.upper().replace('-', '_')}_KEY"


def write_servers_file(path: Path, servers: Sequence[DevServer]) -> dict[str, str]:
    """Write the TOML file; return the environment to add (the file's variable and keys)."""
    lines: list[str] = []
    for server in servers:
        lines += [f"[servers.{server.name}]", f'base_url = "{server.base_url}"',
                  f'api_key_env = "{server.key_env}"', f'state = "{server.state}"']
        if server.capacity is not None:
            lines.append(f"capacity = {server.capacity}")
        lines.append("")
    path.write_text("\n".join(lines))
    env = {"EVOLUTION_API_SERVERS": str(path)}
    env.update({server.key_env: server.api_key for server in servers})
    return env
