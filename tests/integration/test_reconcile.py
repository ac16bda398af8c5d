"""Reconcile (SPEC §9) against a real PostgreSQL and the simulator over real HTTP: every drift
kind created for real, the dry run reports exactly them and changes nothing, --apply repairs
them through the normal paths (the deletion job included), a second dry run reports nothing."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from listener.config import WEBHOOK_EVENTS
from listener.db import queries
from listener.dev.simulator import ScriptedFault, Simulator, SimulatorOptions, running_simulator
from listener.evolution import EvolutionClient, WebhookSpec
from listener.lifecycle.reconcile import DRIFT_KINDS, ReconcileOptions, Reconciler
from listener.lifecycle.reconcile.scheduler import ReconcileScheduler
from listener.ops.metrics import Metrics
from listener.reconcile_cmd import exit_code
from listener.service import Service
from tests.harness import InProcessService, service_env, settings_from
from tests.pg import TestDatabase

WEBHOOK = "https://project-ref.supabase.co/functions/v1/evolution-webhook-handler"
TABLES = ("profiles", "evolution_instance_creation_queue", "evolution_instances",
          "evolution_instance_deletion_queue", "evolution_instance_repairs")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_simulator(SimulatorOptions(seed=5)) as simulator:
        yield simulator


@pytest.fixture
async def service(db: TestDatabase, sim: Simulator) -> AsyncIterator[Service]:
    """The service's pool, client and worker, without its loop: `drain` is the service
    "stopped" and then run once."""
    svc = Service(settings_from(service_env(db.service_dsn, sim.base_url, sim.api_key)))
    await svc.pool.open(wait=True, timeout=15.0)
    await svc.client.start()
    try:
        yield svc
    finally:
        await svc.client.close()
        await svc.pool.close()


def reconciler(service: Service, **options: Any) -> Reconciler:
    base = ReconcileOptions.from_settings(service.settings, service.provisioner.webhook)
    values = {**base.__dict__, **options}
    return Reconciler(service.pool, service.client, ReconcileOptions(**values))


def name(user: uuid.UUID) -> str:
    return f"evo-{user}"


def signup(db: TestDatabase, *users: uuid.UUID) -> None:
    for user in users:
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))


def signup_before_the_trigger(db: TestDatabase, *users: uuid.UUID) -> None:
    """Users of a live product from before `migrate`: no trigger fired for them."""
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        for user in users:
            conn.execute("INSERT INTO profiles (id) VALUES (%s)", (user,))


async def drain(service: Service) -> None:
    counts = await service.worker.drain()
    assert counts.failed == 0, counts


def tables(db: TestDatabase) -> dict[str, list[tuple[object, ...]]]:
    return {t: sorted(map(repr, db.query(f"SELECT * FROM {t}"))) for t in TABLES}  # type: ignore[misc]


def server_state(sim: Simulator) -> dict[str, Any]:
    return {
        "instances": {n: (i.instance_id, i.token) for n, i in sim.instances.items()},
        "webhooks": {n: repr(w.row()) for n, w in sim.webhooks.items()},
    }


async def delete_behind_the_back(sim: Simulator, instance: str) -> None:
    """Through the Evolution API itself, as an operator or DEL_INSTANCE would."""
    async with EvolutionClient(sim.base_url, sim.api_key) as client:
        await client.delete_instance(instance)
    sim.complete_deletes(instance)  # the asynchronous cleanup, finished now


async def make_drift(db: TestDatabase, sim: Simulator, service: Service) -> dict[str, Any]:
    """One of each kind (two unprovisioned profiles), created for real."""
    healthy, missing, hooked, recreated, gone = (uuid.uuid4() for _ in range(5))
    signup(db, healthy, missing, hooked, recreated, gone)
    await drain(service)
    unprovisioned = [uuid.uuid4(), uuid.uuid4()]
    signup_before_the_trigger(db, *unprovisioned)
    await delete_behind_the_back(sim, name(missing))
    async with EvolutionClient(sim.base_url, sim.api_key) as client:
        await client.set_webhook(name(hooked), WebhookSpec(url="https://elsewhere.example/h",
                                                           events=("SEND_MESSAGE",)))
        await client.delete_instance(name(recreated))
        sim.complete_deletes(name(recreated))
        spec = WebhookSpec(url=WEBHOOK, events=WEBHOOK_EVENTS)
        await client.create_instance(name(recreated), integration="WHATSAPP-BAILEYS",
                                     webhook=None, token="someone-elses-token")
        await client.set_webhook(name(recreated), spec)
        stranger = uuid.uuid4()
        await client.create_instance(name(stranger), integration="WHATSAPP-BAILEYS",
                                     webhook=None)
    db.query("DELETE FROM profiles WHERE id = %s", (gone,))  # the service is not running
    return {"healthy": healthy, "missing": missing, "hooked": hooked, "recreated": recreated,
            "gone": gone, "unprovisioned": unprovisioned, "stranger": stranger}


async def test_every_kind_reported_exactly_repaired_and_gone_on_a_second_dry_run(
    db: TestDatabase, sim: Simulator, service: Service
) -> None:
    users = await make_drift(db, sim, service)
    before_tables, before_server = tables(db), server_state(sim)
    requests_before = len(sim.requests)

    dry = await reconciler(service).run()

    assert dry.counts == {"unprovisioned_profile": 2, "missing_instance": 1, "webhook_drift": 1,
                          "instance_id_mismatch": 1, "orphan_instance": 1, "orphan_row": 1}
    found = {(i.kind, i.user_id) for i in dry.items}
    assert found == {
        *(("unprovisioned_profile", u) for u in users["unprovisioned"]),
        ("missing_instance", users["missing"]), ("webhook_drift", users["hooked"]),
        ("instance_id_mismatch", users["recreated"]), ("orphan_instance", users["stranger"]),
        ("orphan_row", users["gone"]),
    }
    assert "someone-elses-token" not in repr(dry.as_json())
    assert tables(db) == before_tables, "a dry run changes nothing in the database"
    assert server_state(sim) == before_server, "a dry run changes nothing at the server"
    during = sim.requests[requests_before:]
    assert {r.method for r in during} == {"GET"}, "a dry run only reads the server"
    assert {r.operation for r in during} == {"fetch_instances", "find_webhook"}

    applied = await reconciler(service).run(apply=True)
    assert applied.failed == 0, [i.as_json() for i in applied.items]
    assert applied.applied == {"unprovisioned_profile": 2, "missing_instance": 1,
                               "webhook_drift": 1, "instance_id_mismatch": 1,
                               "orphan_instance": 0, "orphan_row": 1}
    assert applied.skipped == 1  # the orphan instance: only --delete-orphans deletes it
    assert name(users["stranger"]) in sim.instances
    # The repairs of creations went through the queue; the "stopped" service now drains it.
    queued = db.query("SELECT user_id, status FROM evolution_instance_creation_queue "
                      "WHERE status = 'pending'")
    assert {u for u, _ in queued} == {*users["unprovisioned"], users["missing"]}
    await drain(service)  # the queued creations, and the deletion of `gone`
    assert db.scalar("SELECT status FROM evolution_instance_deletion_queue WHERE user_id = %s",
                     (users["gone"],)) == "completed"
    assert db.query("SELECT 1 FROM evolution_instances WHERE user_id = %s",
                    (users["gone"],)) == []
    hook = sim.webhooks[name(users["hooked"])]
    assert (hook.url, set(hook.events)) == (WEBHOOK, set(WEBHOOK_EVENTS))
    recorded = db.query("SELECT instance_id, instance_token FROM evolution_instances "
                        "WHERE user_id = %s", (users["recreated"],))
    server = sim.instances[name(users["recreated"])]
    assert recorded == [(server.instance_id, "someone-elses-token")]

    with_orphans = await reconciler(service).run(apply=True, delete_orphans=True)
    assert with_orphans.applied["orphan_instance"] == 1 and with_orphans.failed == 0
    sim.complete_deletes()
    assert name(users["stranger"]) not in sim.instances

    assert name(users["gone"]) not in sim.instances, "deleted by the deletion job"

    second = await reconciler(service).run()
    assert second.counts == dict.fromkeys(DRIFT_KINDS, 0)
    assert second.items == [] and not second.has_drift
    assert exit_code(second) == 0


async def test_backfill_of_a_live_product_is_one_apply(
    db: TestDatabase, sim: Simulator, service: Service
) -> None:
    users = [uuid.uuid4() for _ in range(25)]
    signup_before_the_trigger(db, *users)
    report = await reconciler(service).run(apply=True)
    assert report.applied["unprovisioned_profile"] == 25 and report.failed == 0
    await drain(service)
    assert len([n for n in sim.instances if n.startswith("evo-")]) == 25
    after = await reconciler(service).run()
    assert after.counts == dict.fromkeys(DRIFT_KINDS, 0) and not after.has_drift


async def test_deprovision_off_leaves_orphan_rows_in_place(
    db: TestDatabase, sim: Simulator, service: Service
) -> None:
    user = uuid.uuid4()
    signup(db, user)
    await drain(service)
    db.query("DELETE FROM profiles WHERE id = %s", (user,))
    db.query("DELETE FROM evolution_instance_deletion_queue")  # e.g. a backup restored
    report = await reconciler(service, deprovision=False).run(apply=True)
    assert [(i.kind, i.repair) for i in report.items] == [
        ("orphan_row", "left in place (LISTENER_DEPROVISION=off)")]
    assert report.skipped == 1 and report.failed == 0
    assert db.scalar("SELECT count(*) FROM evolution_instance_deletion_queue") == 0
    assert name(user) in sim.instances


async def test_instance_missing_again_after_a_repair_is_said_plainly(
    db: TestDatabase, sim: Simulator, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    user = uuid.uuid4()
    signup(db, user)
    await drain(service)
    metrics = Metrics()
    scheduler = ReconcileScheduler(db.service_dsn, reconciler(service), metrics, 3600)
    for round_ in (1, 2):
        await delete_behind_the_back(sim, name(user))
        with caplog.at_level(logging.WARNING, logger="listener.reconcile"):
            report = await scheduler.run_once()
        assert report is not None and report.counts["missing_instance"] == 1
        await drain(service)
        assert name(user) in sim.instances, "it is still re-created"
        vanished = metrics.instances_vanished_again._value.get()
        assert vanished == round_ - 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "deletes instances by itself" in warnings[0].getMessage()
    assert warnings[0].user_id == str(user)  # type: ignore[attr-defined]
    assert metrics.drift.labels(kind="missing_instance")._value.get() == 1
    assert metrics.last_reconcile._value.get() > 0


async def test_one_replica_at_a_time(db: TestDatabase, sim: Simulator, service: Service) -> None:
    metrics = Metrics()
    scheduler = ReconcileScheduler(db.service_dsn, reconciler(service), metrics, 3600)
    with psycopg.connect(db.service_dsn, autocommit=True) as other_replica:
        other_replica.execute(queries.RECONCILE_TRY_LOCK, {"key": queries.RECONCILE_LOCK_KEY})
        assert await scheduler.run_once() is None
        assert metrics.last_reconcile._value.get() == 0
    assert await scheduler.run_once() is not None
    assert scheduler.runs == 1


async def test_scheduler_runs_every_interval_until_stopped(
    db: TestDatabase, sim: Simulator, service: Service
) -> None:
    scheduler = ReconcileScheduler(db.service_dsn, reconciler(service), Metrics(), 0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    for _ in range(100):
        if scheduler.runs >= 2:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert scheduler.runs >= 2


async def test_rate_limits_and_a_short_outage_are_waited_out(
    db: TestDatabase, sim: Simulator, service: Service
) -> None:
    users = [uuid.uuid4() for _ in range(4)]
    signup(db, *users)
    await drain(service)
    sim.add_fault(ScriptedFault(operation="find_webhook", status=429, retry_after=0.3, times=2))
    sim.add_fault(ScriptedFault(operation="fetch_instances", status=503, times=2))
    report = await reconciler(service).run()
    assert not report.has_drift
    assert len(sim.requests_for("find_webhook")) == 4 + 2


async def test_running_service_reconciles_by_itself(db: TestDatabase, sim: Simulator) -> None:
    """Wired into the service: a user from before the trigger is provisioned by the
    in-service reconcile (then the NOTIFY), and /metrics shows the drift it found."""
    env = service_env(db.service_dsn, sim.base_url, sim.api_key,
                      LISTENER_RECONCILE_INTERVAL_S="0.3")
    service = await InProcessService(env).start()
    try:
        user = uuid.uuid4()
        signup_before_the_trigger(db, user)
        for _ in range(200):
            if name(user) in sim.instances and db.scalar(
                    "SELECT status FROM evolution_instance_creation_queue WHERE user_id = %s",
                    (user,)) == "completed":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the in-service reconcile did not provision the user")
        metrics = service.service.metrics
        assert service.service.reconcile.runs >= 1
        assert metrics.last_reconcile._value.get() > 0
        body = metrics.render()[0].decode()
        for kind in DRIFT_KINDS:
            assert f'evolution_listener_drift{{kind="{kind}"}}' in body
    finally:
        assert await service.stop() == 0


async def test_fetch_instances_reads_every_row_and_hides_tokens(sim: Simulator) -> None:
    async with EvolutionClient(sim.base_url, sim.api_key) as client:
        for index in range(3):
            await client.create_instance(f"evo-fetch-{index}", integration="WHATSAPP-BAILEYS",
                                         webhook=None, token=f"secret-tok-{index}")
        rows = await client.fetch_instances()
    assert sorted(r.instance_name for r in rows) == [f"evo-fetch-{i}" for i in range(3)]
    assert {r.token for r in rows} == {f"secret-tok-{i}" for i in range(3)}
    assert "secret-tok" not in repr(rows)
    assert all(r.instance_id for r in rows)
