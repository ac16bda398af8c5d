"""Fixtures for tests that talk to the Evolution API simulator over real HTTP on 127.0.0.1.

Import them where needed (`from tests.simulator_fixtures import simulator  # noqa: F401`),
or all at once from a conftest (`from tests.simulator_fixtures import *`). Nothing here
needs a database.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from listener.dev.simulator import Simulator, SimulatorOptions, running_simulator
from listener.evolution import EvolutionClient

__all__ = [
    "CONTRACT_CANDIDATES",
    "evolution_client",
    "evolution_contract",
    "find_contract",
    "simulator",
    "unused_tcp_port",
]

_REPO = Path(__file__).resolve().parent.parent
# Where the recorded Evolution API contract may live: an explicit path, a copy in the repo,
# or the shared research folder this project started from.
CONTRACT_CANDIDATES: tuple[Path, ...] = tuple(
    Path(p)
    for p in (
        os.environ.get("EVOLUTION_CONTRACT_PATH", ""),
        _REPO / "docs" / "evolution-api-contract.json",
        _REPO / "tests" / "data" / "evolution-api-contract.json",
        "/work/shared/evolution-api-contract.json",
    )
    if p
)


def find_contract() -> Path | None:
    """The first existing contract file, or None."""
    for path in CONTRACT_CANDIDATES:
        if path.is_file():
            return path
    return None


def unused_tcp_port() -> int:
    """A port nothing listens on (bound then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="session")
def evolution_contract() -> dict[str, Any]:
    """The recorded Evolution API v2.3.6 contract (endpoints + 111 observed exchanges)."""
    path = find_contract()
    if path is None:
        pytest.skip(
            "evolution-api-contract.json not found; set EVOLUTION_CONTRACT_PATH or copy it "
            "to docs/evolution-api-contract.json"
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A fresh, healthy simulator on 127.0.0.1 (random port, seeded); stopped after the test."""
    async with running_simulator(SimulatorOptions(seed=1234)) as sim:
        yield sim


@pytest.fixture
async def evolution_client(simulator: Simulator) -> AsyncIterator[EvolutionClient]:
    """A started client pointed at `simulator`, with a short timeout for fast failure tests."""
    async with EvolutionClient(simulator.base_url, simulator.api_key, timeout_s=2.0) as client:
        yield client
