"""The listener service against a real PostgreSQL and the simulator over real HTTP.

Every test asserts the database's final state and the simulator's record.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import psycopg
import pytest

from listener.config import WEBHOOK_EVENTS
from listener.simulator import ScriptedFault, Simulator, SimulatorOptions, running_simulator
from tests.harness import (
    InProcessService,
    instance_rows,
    queue_rows,
    service_env,
    signup,
    wait_until,
)
from tests.pg import TestDatabase

WEBHOOK = "https://project-ref.supabase.co/functions/v1/evolution-webhook-handler"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_simulator(SimulatorOptions(seed=7)) as simulator:
        yield simulator


def _env(db: TestDatabase, sim: Simulator, **overrides: object) -> dict[str, str]:
    return service_env(db.service_dsn, sim.base_url, sim.api_key, **overrides)


def _creates(sim: Simulator) -> Counter[str]:
    return Counter(
        r.instance for r in sim.requests
        if r.operation == "create_instance" and r.status == 201 and r.instance
    )


def _all_done(db: TestDatabase, users: list[uuid.UUID], status: str = "completed") -> bool:
    rows = queue_rows(db.dsn)
    return all(rows.get(u, {}).get("status") == status for u in users)


async def test_signup_is_provisioned_without_waiting_for_the_sweep(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim, LISTENER_SWEEP_INTERVAL_S=3600)).start()
    try:
        started = time.monotonic()
        [user] = signup(db.dsn)
        await wait_until(lambda: _all_done(db, [user]), timeout_s=5)
        elapsed = time.monotonic() - started
    finally:
        assert await service.stop() == 0
    assert elapsed < 2.0, f"took {elapsed:.2f}s: it waited for something other than NOTIFY"
    name = f"evo-{user}"
    instance = instance_rows(db.dsn)[user]
    assert instance["instance_name"] == name
    assert instance["webhook_url"] == WEBHOOK
    assert instance["webhook_events"] == list(WEBHOOK_EVENTS)
    assert instance["instance_token"] == sim.instances[name].token
    hook = sim.webhooks[name]
    assert hook.url == WEBHOOK and hook.enabled
    assert sorted(hook.events) == sorted(WEBHOOK_EVENTS)
    assert hook.by_events is False and hook.base64 is False
    row = queue_rows(db.dsn)[user]
    assert row["processed_at"] is not None and row["error_message"] is None
    assert row["retry_count"] == 0
    assert _creates(sim) == {name: 1}
