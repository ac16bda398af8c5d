"""Many Evolution servers (SPEC §10, issue 12): the service against three simulators over
real HTTP, one of them draining, and a real PostgreSQL.

Each test asserts where instances landed (the simulators' own records), what the queue rows
and `evolution_instances.server` say, and what /readyz answers.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from listener.dev.fleet import DevServer, write_servers_file
from listener.dev.simulator import Simulator, SimulatorOptions, running_simulators
from listener.lifecycle.reconcile import ReconcileOptions, Reconciler
from tests.harness import (
    InProcessService,
    all_in_status,
    service_env,
    signup,
    wait_until,
)
from tests.pg import TestDatabase

NAMES = ("a", "b", "c")


@pytest.fixture
async def sims() -> AsyncIterator[list[Simulator]]:
    async with running_simulators(3, SimulatorOptions(seed=11)) as simulators:
        yield simulators


def _env(db: TestDatabase, tmp_path: Path, sims: Sequence[Simulator],
         capacities: Sequence[int | None], **overrides: Any) -> dict[str, str]:
    """a and b active, c draining; the single-server variables point at nothing usable."""
    servers = [DevServer(name, sim.base_url, sim.api_key, capacity,
                         "draining" if name == "c" else "active")
               for name, sim, capacity in zip(NAMES, sims, capacities, strict=True)]
    env = service_env(db.dsn, "http://127.0.0.1:9", "unused", **overrides)
    env.update(write_servers_file(tmp_path / "servers.toml", servers))
    return env


def _placed(dsn: str) -> dict[uuid.UUID, dict[str, Any]]:
    """user -> the queue row's server and status, and the instance row's server."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT q.user_id, q.server, q.status, q.retry_count, i.server AS instance_server "
            "FROM evolution_instance_creation_queue q "
            "LEFT JOIN evolution_instances i ON i.user_id = q.user_id").fetchall()
    return {r[0]: {"server": r[1], "status": r[2], "retry_count": r[3], "instance_server": r[4]}
            for r in rows}


def _on_sims(sims: Sequence[Simulator]) -> dict[str, str]:
    """instance name -> the server holding it; fails if one name is on two servers."""
    where: dict[str, str] = {}
    for name, sim in zip(NAMES, sims, strict=True):
        for instance in sim.instances:
            assert instance not in where, f"{instance} on {where[instance]} and {name}"
            where[instance] = name
    return where


def _creates_per_instance(sims: Sequence[Simulator]) -> Counter[str]:
    return Counter(r.instance for sim in sims for r in sim.requests
                   if r.operation == "create_instance" and r.status == 201 and r.instance)


def _completed(dsn: str, users: Sequence[uuid.UUID]) -> bool:
    return all_in_status(dsn, users)


async def _get(service: InProcessService, path: str) -> tuple[int, str]:
    """The service runs on this event loop: ask it asynchronously."""
    url = f"http://127.0.0.1:{service.service.ops.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def _readyz(service: InProcessService) -> tuple[int, dict[str, Any]]:
    status, body = await _get(service, "/readyz")
    return status, json.loads(body)


async def _metric(service: InProcessService, name: str) -> float:
    _status, body = await _get(service, "/metrics")
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def test_fills_by_share_within_capacity_never_on_draining_then_waits_when_full(
    db: TestDatabase, tmp_path: Path, sims: list[Simulator]
) -> None:
    service = await InProcessService(_env(db, tmp_path, sims, (10, 20, 100),
                                          LISTENER_CONCURRENCY=4)).start()
    try:
        first = signup(db.dsn, 15)
        await wait_until(lambda: _completed(db.dsn, first), timeout_s=20)
        halfway = Counter(row["server"] for row in _placed(db.dsn).values())
        more = signup(db.dsn, 18)  # 33 in all: 30 fill a (10) and b (20), 3 must wait
        await wait_until(lambda: sum(r["status"] == "completed"
                                     for r in _placed(db.dsn).values()) == 30, timeout_s=20)
        async def full() -> bool:
            return await _metric(service, "evolution_listener_servers_full") == 1

        await wait_until(full, timeout_s=5)
        status, ready = await _readyz(service)
    finally:
        assert await service.stop() == 0
    # By share while there is room: 15 over capacities 10 and 20 is 5 and 10.
    assert 4 <= halfway["a"] <= 6 and 9 <= halfway["b"] <= 11, halfway
    assert halfway["c"] == 0
    rows = _placed(db.dsn)
    done = [r for r in rows.values() if r["status"] == "completed"]
    assert Counter(r["server"] for r in done) == {"a": 10, "b": 20}
    assert all(r["instance_server"] == r["server"] for r in done)
    waiting = [r for u, r in rows.items() if r["status"] != "completed"]
    assert len(waiting) == 3 and {u for u in more} >= {
        u for u, r in rows.items() if r["status"] != "completed"}
    assert all(r["status"] == "pending" and r["retry_count"] == 0 and r["server"] is None
               for r in waiting), waiting
    assert len(sims[0].instances) == 10 and len(sims[1].instances) == 20
    assert len(sims[2].instances) == 0  # draining: no placement
    assert status == 200 and ready["ready"] is True and ready["placement"] == "all_full"
    assert "full" in ready["reason"]


async def test_lost_create_responses_on_every_server_still_one_instance_per_user(
    db: TestDatabase, tmp_path: Path, sims: list[Simulator]
) -> None:
    for sim in sims:
        sim.options.lose_response_rate = 0.2
    service = await InProcessService(_env(db, tmp_path, sims, (None, None, None),
                                          LISTENER_CONCURRENCY=8,
                                          LISTENER_MAX_RETRIES=10)).start()
    try:
        users = signup(db.dsn, 40)
        await wait_until(lambda: _completed(db.dsn, users), timeout_s=60, interval_s=0.2)
    finally:
        assert await service.stop() == 0
    where = _on_sims(sims)  # no instance on two servers
    rows = _placed(db.dsn)
    assert len(where) == 40
    for user, row in rows.items():
        assert row["server"] in ("a", "b") and row["instance_server"] == row["server"]
        assert where[f"evo-{user}"] == row["server"]
    creates = _creates_per_instance(sims)
    assert set(creates.values()) <= {1}  # a lost answer is adopted, never created again
    lost = sum(1 for sim in sims for r in sim.requests if r.operation == "create_instance"
               and r.status != 201)
    assert lost > 0, "no create answer was lost: the test proves nothing"


async def test_one_server_down_new_signups_go_elsewhere_and_its_work_resumes(
    db: TestDatabase, tmp_path: Path, sims: list[Simulator]
) -> None:
    service = await InProcessService(_env(db, tmp_path, sims, (100, 100, 100),
                                          LISTENER_CONCURRENCY=4)).start()
    try:
        warm = signup(db.dsn, 4)
        await wait_until(lambda: _completed(db.dsn, warm), timeout_s=10)
        await sims[0].down()
        during = signup(db.dsn, 12)
        await wait_until(lambda: service.service.worker.breakers.get("a").is_open,
                         timeout_s=10)

        def settled_elsewhere() -> bool:
            rows = _placed(db.dsn)
            return all(rows[u]["server"] is not None for u in during) and all(
                rows[u]["status"] == "completed" for u in during if rows[u]["server"] == "b")

        await wait_until(settled_elsewhere, timeout_s=20)
        rows = _placed(db.dsn)
        stuck = [u for u in during if rows[u]["server"] == "a"]
        placed_on_b = [u for u in during if rows[u]["server"] == "b"]
        status, ready = await _readyz(service)
        assert status == 200 and ready["ready"] is True, ready
        assert "a" in ready["backing_off"]
        stuck_rows = [rows[u] for u in stuck]
        await sims[0].up()
        await wait_until(lambda: _completed(db.dsn, during), timeout_s=40, interval_s=0.2)
    finally:
        assert await service.stop() == 0
    assert stuck, "nothing was placed on the server before it went down"
    assert all(r["status"] == "pending" and r["retry_count"] == 0 for r in stuck_rows)
    assert len(placed_on_b) == len(during) - len(stuck) and len(placed_on_b) >= 8
    final = _placed(db.dsn)
    assert all(final[u]["retry_count"] == 0 for u in during)
    assert all(final[u]["server"] == "a" and final[u]["instance_server"] == "a"
               for u in stuck)  # resumed where it was placed
    assert {f"evo-{u}" for u in stuck} <= set(sims[0].instances)
    assert not sims[2].instances


async def test_reconcile_reads_each_server_and_reports_an_instance_on_another_server(
    db: TestDatabase, tmp_path: Path, sims: list[Simulator]
) -> None:
    service = await InProcessService(_env(db, tmp_path, sims, (None, None, None))).start()
    try:
        users = signup(db.dsn, 4)
        await wait_until(lambda: _completed(db.dsn, users), timeout_s=20)
        svc = service.service
        options = ReconcileOptions.from_settings(svc.settings, svc.provisioner.webhook)
        clean = await Reconciler(svc.pool, svc.clients, options).run()
        # One row now says b while its instance is on a (or the reverse): reported, and
        # --apply does not move it.
        moved = users[0]
        recorded = _placed(db.dsn)[moved]["instance_server"]
        other = "b" if recorded == "a" else "a"
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("UPDATE evolution_instances SET server = %s WHERE user_id = %s",
                         (other, moved))
        await sims[2].down()  # the draining server cannot be read: skipped, not a failure
        report = await Reconciler(svc.pool, svc.clients, options).run(apply=True)
    finally:
        assert await service.stop() == 0
    assert clean.items == [] and clean.instances_seen == 4
    [item] = report.items
    assert item.kind == "instance_id_mismatch" and item.fields == ("server",)
    assert item.server == recorded and f"recorded on server {other}" in item.detail
    assert item.repair is not None and "never moved" in item.repair
    assert _on_sims(sims)[f"evo-{moved}"] == recorded
