"""The listener service against a real PostgreSQL and the simulator over real HTTP.

Every test asserts the database's final state and the simulator's record.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection

import psycopg
import pytest

from listener.config import WEBHOOK_EVENTS
from listener.dev.simulator import ScriptedFault, Simulator, SimulatorOptions, running_simulator
from tests.harness import (
    InProcessService,
    all_in_status,
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
    return all_in_status(db.dsn, users, status)


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


async def _concurrent_signups(dsn: str, count: int, writers: int = 10) -> list[uuid.UUID]:
    users = [uuid.uuid4() for _ in range(count)]

    async def writer(chunk: list[uuid.UUID]) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for user_id in chunk:
                await conn.execute("INSERT INTO profiles (id) VALUES (%s)", (user_id,))

    await asyncio.gather(*(writer(users[i::writers]) for i in range(writers)))
    return users


async def test_500_concurrent_signups_with_3_replicas_exactly_once(
    db: TestDatabase, sim: Simulator
) -> None:
    sim.options.latency_ms = 2
    replicas = [
        await InProcessService(_env(db, sim, LISTENER_CONCURRENCY=16,
                                    LISTENER_SWEEP_INTERVAL_S=3600)).start()
        for _ in range(3)
    ]
    try:
        users = await _concurrent_signups(db.dsn, 500)
        await wait_until(lambda: _all_done(db, users), timeout_s=60, interval_s=0.2)
    finally:
        codes = [await r.stop() for r in replicas]
    assert codes == [0, 0, 0]
    rows = queue_rows(db.dsn)
    assert len(rows) == 500
    # Each row claimed once: a second claim would have bumped `attempts`.
    assert Counter(r["attempts"] for r in rows.values()) == {1: 500}
    assert all(r["retry_count"] == 0 for r in rows.values())
    assert len(instance_rows(db.dsn)) == 500
    creates = _creates(sim)
    assert len(creates) == 500 and set(creates.values()) == {1}
    assert len(sim.instances) == 500
    # The work was shared: every replica completed some.
    done_by = [r.service.worker.counts.completed for r in replicas]
    assert sum(done_by) == 500 and all(n > 0 for n in done_by), done_by


def _create_times(sim: Simulator, name: str) -> list[float]:
    return [r.started_at for r in sim.requests
            if r.operation == "create_instance" and r.instance == name]


async def test_500s_then_success_completes_with_retries_spent(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    try:
        user = uuid.uuid4()
        name = f"evo-{user}"
        sim.add_fault(ScriptedFault(kind="status", status=500, operation="create_instance",
                                    instance=name, times=2))
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))
        await wait_until(lambda: _all_done(db, [user]), timeout_s=10)
    finally:
        await service.stop()
    row = queue_rows(db.dsn)[user]
    assert row["retry_count"] == 2 and row["error_message"] is None
    assert [r.status for r in sim.requests
            if r.operation == "create_instance" and r.instance == name] == [500, 500, 201]
    assert user in instance_rows(db.dsn)


async def test_always_500_fails_after_three_retries_spaced_by_the_seed_policy(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim, LISTENER_RETRY_BASE_MS=800)).start()
    user = uuid.uuid4()
    name = f"evo-{user}"
    sim.add_fault(ScriptedFault(kind="status", status=500, operation="create_instance",
                                instance=name, times=None,
                                message="Internal failure from the test"))
    try:
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))
        await wait_until(lambda: _all_done(db, [user], "failed"), timeout_s=15)
    finally:
        await service.stop()
    row = queue_rows(db.dsn)[user]
    assert row["retry_count"] == 3
    assert "Internal failure from the test" in row["error_message"]
    assert row["processed_at"] is not None
    times = _create_times(sim, name)
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, (0.8, 1.6, 3.2), strict=True):
        assert expected - 0.05 <= gap <= expected + 0.6, gaps
    assert user not in instance_rows(db.dsn)


async def test_a_400_fails_at_once_with_the_servers_message(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    user = uuid.uuid4()
    name = f"evo-{user}"
    sim.add_fault(ScriptedFault(kind="status", status=400, operation="create_instance",
                                instance=name, message=["Invalid integration"]))
    try:
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))
        await wait_until(lambda: _all_done(db, [user], "failed"), timeout_s=5)
    finally:
        await service.stop()
    row = queue_rows(db.dsn)[user]
    assert row["retry_count"] == 0
    assert "Invalid integration" in row["error_message"]
    assert len(_create_times(sim, name)) == 1


async def test_a_429_waits_its_retry_after_and_spends_no_retry(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    user = uuid.uuid4()
    name = f"evo-{user}"
    sim.add_fault(ScriptedFault(kind="status", status=429, operation="create_instance",
                                instance=name, retry_after="1"))
    try:
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))
        await wait_until(lambda: _all_done(db, [user]), timeout_s=10)
    finally:
        await service.stop()
    times = _create_times(sim, name)
    assert len(times) == 2
    assert 0.95 <= times[1] - times[0] <= 2.0, times
    assert queue_rows(db.dsn)[user]["retry_count"] == 0


async def test_created_but_response_lost_is_adopted_not_duplicated(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    user = uuid.uuid4()
    name = f"evo-{user}"
    sim.add_fault(ScriptedFault(kind="lose_response", operation="create_instance",
                                instance=name))
    try:
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))
        await wait_until(lambda: _all_done(db, [user]), timeout_s=10)
    finally:
        await service.stop()
    creates = [r for r in sim.requests if r.operation == "create_instance"]
    assert [(r.outcome, r.status) for r in creates][-1] == ("answered", 403)
    assert [n for n in sim.instances if n == name] == [name]
    assert instance_rows(db.dsn)[user]["instance_token"] == sim.instances[name].token
    assert name in sim.webhooks


async def test_an_outage_longer_than_the_retry_window_burns_no_retries(
    db: TestDatabase, sim: Simulator
) -> None:
    # Retry window with these settings: 0.1 + 0.2 + 0.4 s; the outage lasts 3 s.
    service = await InProcessService(_env(db, sim, LISTENER_RETRY_BASE_MS=100)).start()
    try:
        sim.start_outage(duration_s=3.0)
        outage_started = time.monotonic()
        users = signup(db.dsn, 20)
        await wait_until(lambda: not service.service.readiness()[0], timeout_s=3)
        not_ready_after = time.monotonic() - outage_started
        assert "backing off" in service.service.readiness()[1]
        await wait_until(lambda: _all_done(db, users), timeout_s=20, interval_s=0.1)
        assert service.service.readiness()[0]
    finally:
        await service.stop()
    assert not_ready_after < 3.0
    rows = queue_rows(db.dsn)
    assert all(rows[u]["retry_count"] == 0 for u in users), [rows[u]["retry_count"] for u in users]
    assert len(instance_rows(db.dsn)) == 20
    assert set(_creates(sim).values()) == {1}


async def test_rejected_api_key_backs_off_and_resumes_when_fixed(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim)).start()
    try:
        sim.options.wrong_key = True
        users = signup(db.dsn, 5)
        await wait_until(lambda: "API key" in service.service.readiness()[1], timeout_s=3)
        await asyncio.sleep(1.0)
        assert not any(r["status"] == "completed" for r in queue_rows(db.dsn).values())
        sim.options.wrong_key = False
        await wait_until(lambda: _all_done(db, users), timeout_s=15, interval_s=0.1)
    finally:
        await service.stop()
    assert all(r["retry_count"] == 0 for r in queue_rows(db.dsn).values())


async def test_signups_made_while_stopped_are_swept_at_start(
    db: TestDatabase, sim: Simulator
) -> None:
    users = signup(db.dsn, 5)
    service = await InProcessService(_env(db, sim, LISTENER_SWEEP_INTERVAL_S=3600)).start()
    try:
        await wait_until(lambda: _all_done(db, users), timeout_s=5)
    finally:
        await service.stop()
    assert len(_creates(sim)) == 5


async def test_malformed_notifications_are_logged_and_ignored(
    db: TestDatabase, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    service = await InProcessService(_env(db, sim, LISTENER_SWEEP_INTERVAL_S=3600)).start()
    payloads = ["not json", "[1, 2]", json.dumps({"id": "x", "user_id": "y"}),
                json.dumps({"id": 1, "user_id": "not-a-uuid"}), ""]
    try:
        with caplog.at_level("WARNING", logger="listener.wakeup"):
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                for payload in payloads:
                    conn.execute("SELECT pg_notify('evolution_instance_creation_queue', %s)",
                                 (payload,))
            await wait_until(
                lambda: sum("malformed" in r.getMessage() for r in caplog.records) >= 5,
                timeout_s=5)
        # Still serving.
        [user] = signup(db.dsn)
        await wait_until(lambda: _all_done(db, [user]), timeout_s=5)
    finally:
        assert await service.stop() == 0
    reasons = [getattr(r, "reason", "") for r in caplog.records if "malformed" in r.getMessage()]
    assert len(reasons) == 5 and all(reasons)


async def test_a_late_finisher_cannot_overwrite_another_replicas_claim(db: TestDatabase) -> None:
    from psycopg_pool import AsyncConnectionPool

    from listener.db.store import CreationStore, InstanceRecord

    [user] = signup(db.dsn)
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=2) as pool:
        first = CreationStore(pool, "replica-a", lease_s=60)
        second = CreationStore(pool, "replica-b", lease_s=60)
        [mine], _ = await first.claim(8)
        db.query("UPDATE evolution_instance_creation_queue "
                 "SET next_attempt_at = now() - interval '1 second'")
        [theirs], next_due = await second.claim(8)
        assert next_due is None  # nothing else in the queue
        assert theirs.reclaimed and theirs.claim_seq == mine.claim_seq + 1
        record = InstanceRecord("evo-x", "id", "WHATSAPP-BAILEYS", "tok")
        assert await first.complete_many([(mine, record)], WEBHOOK, ["SEND_MESSAGE"]) == {}
        assert await first.fail(mine, 0, "late") is False
        assert await first.release(mine, 0, None) is False
        done = await second.complete_many([(theirs, record)], WEBHOOK, ["SEND_MESSAGE"])
        assert list(done) == [(theirs.id, theirs.claim_seq)]
    assert queue_rows(db.dsn)[user]["status"] == "completed"


async def test_claim_reports_when_the_next_unclaimed_row_is_due(db: TestDatabase) -> None:
    from psycopg_pool import AsyncConnectionPool

    from listener.db.store import CreationStore

    now_user, later_user = signup(db.dsn, 2)
    db.query("UPDATE evolution_instance_creation_queue "
             "SET next_attempt_at = now() + interval '30 seconds' WHERE user_id = %s",
             (later_user,))
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=1) as pool:
        store = CreationStore(pool, "replica-a", lease_s=60)
        claimed, next_due = await store.claim(8)
        assert [e.user_id for e in claimed] == [now_user]
        assert next_due is not None and 28 < next_due <= 30
        claimed, next_due = await store.claim(8)
        assert claimed == [] and next_due is not None and 28 < next_due <= 30


async def test_a_row_reclaimed_too_often_is_failed_with_the_reason(
    db: TestDatabase, sim: Simulator
) -> None:
    [user] = signup(db.dsn)
    db.query("UPDATE evolution_instance_creation_queue SET status = 'processing', "
             "reclaim_count = 10, lease_owner = 'dead', next_attempt_at = now()")
    service = await InProcessService(_env(db, sim, LISTENER_MAX_RECLAIMS=10)).start()
    try:
        await wait_until(lambda: _all_done(db, [user], "failed"), timeout_s=5)
    finally:
        await service.stop()
    row = queue_rows(db.dsn)[user]
    assert "reclaimed 11 times" in row["error_message"]
    assert _creates(sim) == Counter()


async def test_scheduled_cleanup_runs_inside_the_service(
    db: TestDatabase, sim: Simulator
) -> None:
    old, recent = signup(db.dsn, 2)
    db.query("UPDATE evolution_instance_creation_queue SET status = 'completed', "
             "processed_at = now() - interval '40 days' WHERE user_id = %s", (old,))
    db.query("UPDATE evolution_instance_creation_queue SET status = 'completed', "
             "processed_at = now() - interval '2 days' WHERE user_id = %s", (recent,))
    # 00:00 UTC has always passed today: the service runs today's cleanup at once.
    service = await InProcessService(_env(db, sim, LISTENER_CLEANUP_AT="00:00")).start()
    try:
        await wait_until(lambda: old not in queue_rows(db.dsn), timeout_s=5)
    finally:
        await service.stop()
    assert recent in queue_rows(db.dsn)


async def test_scheduled_cleanup_is_off_by_default(db: TestDatabase, sim: Simulator) -> None:
    [old] = signup(db.dsn, 1)
    db.query("UPDATE evolution_instance_creation_queue SET status = 'completed', "
             "processed_at = now() - interval '40 days'")
    service = await InProcessService(_env(db, sim)).start()
    try:
        await asyncio.sleep(1.5)
    finally:
        await service.stop()
    assert old in queue_rows(db.dsn)


async def test_one_bad_row_does_not_fail_its_batch_neighbours(db: TestDatabase) -> None:
    from psycopg_pool import AsyncConnectionPool

    from listener.core.batcher import CompletionBatcher
    from listener.db.store import CreationStore, InstanceRecord

    users = signup(db.dsn, 3)
    taken = uuid.uuid4()
    db.query("INSERT INTO evolution_instances (user_id, instance_name, integration, "
             "webhook_url, webhook_events) VALUES (%s, 'evo-taken', 'X', 'u', '{}')", (taken,))
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=2) as pool:
        store = CreationStore(pool, "replica-a", lease_s=60)
        entries, _ = await store.claim(8)
        batcher: CompletionBatcher[InstanceRecord] = CompletionBatcher(
            lambda done: store.complete_many(done, WEBHOOK, ["SEND_MESSAGE"]))
        names = {e.id: ("evo-taken" if i == 1 else f"evo-{e.user_id}")
                 for i, e in enumerate(entries)}
        results = await asyncio.gather(
            *(batcher.complete(e, InstanceRecord(names[e.id], "id", "X", "tok"))
              for e in entries),
            return_exceptions=True,
        )
    assert isinstance(results[1], psycopg.errors.UniqueViolation)
    assert all(isinstance(r, float) for i, r in enumerate(results) if i != 1), results
    rows = queue_rows(db.dsn)
    assert sorted(rows[u]["status"] for u in users) == ["completed", "completed", "processing"]


async def test_a_stale_and_a_current_claim_of_one_row_in_one_batch(db: TestDatabase) -> None:
    from psycopg_pool import AsyncConnectionPool

    from listener.core.batcher import CompletionBatcher
    from listener.db.store import CreationStore, InstanceRecord

    [user] = signup(db.dsn)
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=2) as pool:
        store = CreationStore(pool, "replica-a", lease_s=60)
        [stale], _ = await store.claim(8)
        db.query("UPDATE evolution_instance_creation_queue "
                 "SET next_attempt_at = now() - interval '1 second'")
        [current], _ = await store.claim(8)
        batcher: CompletionBatcher[InstanceRecord] = CompletionBatcher(
            lambda done: store.complete_many(done, WEBHOOK, ["SEND_MESSAGE"]))
        old, new = await asyncio.gather(
            batcher.complete(stale, InstanceRecord("evo-stale", "old-id", "X", "old")),
            batcher.complete(current, InstanceRecord(f"evo-{user}", "new-id", "X", "new")),
        )
    assert old is None and isinstance(new, float)
    instance = instance_rows(db.dsn)[user]
    assert (instance["instance_id"], instance["instance_token"]) == ("new-id", "new")


async def test_a_due_row_locked_elsewhere_is_not_polled_in_a_tight_loop(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim, LISTENER_SWEEP_INTERVAL_S=3600)).start()
    store = service.service.store
    claims = 0
    original = store.claim

    async def counting_claim(limit: int, paused: Collection[str] = ()) -> object:
        nonlocal claims
        claims += 1
        return await original(limit, paused)

    store.claim = counting_claim  # type: ignore[method-assign]
    try:
        user = uuid.uuid4()
        with psycopg.connect(db.dsn) as locker:
            locker.execute("INSERT INTO evolution_instance_creation_queue (user_id) VALUES (%s)",
                           (user,))
            locker.commit()
            locker.execute("SELECT 1 FROM evolution_instance_creation_queue "
                           "WHERE user_id = %s FOR UPDATE", (user,))
            service.service.worker.wake()
            await asyncio.sleep(2.0)
            locked_claims = claims
        # Lock gone: the row is taken within the back-off's bound.
        await wait_until(lambda: _all_done(db, [user]), timeout_s=5)
    finally:
        await service.stop()
    assert 2 <= locked_claims <= 12, locked_claims


async def test_a_hung_claim_is_reported_as_stalled_for_the_watchdog(
    db: TestDatabase, sim: Simulator
) -> None:
    service = await InProcessService(_env(db, sim, LISTENER_SWEEP_INTERVAL_S=3600)).start()
    worker = service.service.worker
    release = asyncio.Event()
    original = service.service.store.claim

    async def hanging_claim(limit: int, paused: Collection[str] = ()) -> object:
        await release.wait()
        return await original(limit, paused)

    try:
        assert not worker.stalled(limit_s=0.2)
        service.service.store.claim = hanging_claim  # type: ignore[method-assign]
        worker.wake()
        await wait_until(lambda: worker.stalled(limit_s=0.2), timeout_s=3)
        release.set()
        await wait_until(lambda: not worker.stalled(limit_s=0.2), timeout_s=3)
    finally:
        release.set()
        await service.stop()


async def test_a_batch_completion_can_claim_the_next_due_rows_in_one_statement(
    db: TestDatabase,
) -> None:
    """COMPLETE_MANY_AND_CLAIM: the batch is completed (fenced per row), up to `limit` due
    rows are claimed oldest first, rows on a paused server and the batch's own rows (even
    a due one: an expired lease of ours) are not claimed, and the next due time comes back."""
    from psycopg_pool import AsyncConnectionPool

    from listener.db.store import CreationStore, InstanceRecord

    users = signup(db.dsn, 6)
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=2) as pool:
        store = CreationStore(pool, "replica-a", lease_s=60)
        batch, _ = await store.claim(2)
        assert [e.user_id for e in batch] == users[:2]
        # The first batch row's lease has expired (it is due again), the last user's row is
        # placed on a paused server, and the fifth is due only in 30 s.
        db.query("UPDATE evolution_instance_creation_queue "
                 "SET next_attempt_at = now() - interval '1 hour' WHERE id = %s", (batch[0].id,))
        db.query("UPDATE evolution_instance_creation_queue SET server = 'paused-one' "
                 "WHERE user_id = %s", (users[5],))
        db.query("UPDATE evolution_instance_creation_queue "
                 "SET next_attempt_at = now() + interval '30 seconds' WHERE user_id = %s",
                 (users[4],))
        records = [(e, InstanceRecord(f"evo-{e.user_id}", f"id-{e.id}", "WHATSAPP-BAILEYS",
                                      "tok")) for e in batch]
        result = await store.complete_many_and_claim(
            records, WEBHOOK, ["SEND_MESSAGE"], limit=5, paused=["paused-one"])
        assert sorted(result.latencies) == sorted((e.id, e.claim_seq) for e in batch)
        assert [e.user_id for e in result.claimed] == users[2:4]
        assert all(not e.reclaimed and e.claim_seq == 1 for e in result.claimed)
        assert result.next_due_s is not None and 25 < result.next_due_s <= 30
    rows = queue_rows(db.dsn)
    assert [rows[u]["status"] for u in users] == ["completed", "completed", "processing",
                                                  "processing", "pending", "pending"]
    recorded = db.query("SELECT user_id FROM evolution_instances ORDER BY user_id")
    assert sorted(r[0] for r in recorded) == sorted(users[:2])


async def test_a_drain_refills_through_its_completions(db: TestDatabase, sim: Simulator) -> None:
    """The service drains a backlog with claims riding on its completion batches: every
    user once, within the concurrency, and far fewer claim statements than batches."""
    users = signup(db.dsn, 200)
    service = InProcessService(_env(db, sim, LISTENER_CONCURRENCY=8))
    store = service.service.store
    calls: Counter[str] = Counter()
    plain_claim, riding = store.claim, store.complete_many_and_claim

    async def counted_claim(*args: object, **kwargs: object) -> object:
        calls["claim"] += 1
        return await plain_claim(*args, **kwargs)  # type: ignore[arg-type]

    async def counted_ride(*args: object, **kwargs: object) -> object:
        calls["ride"] += 1
        result = await riding(*args, **kwargs)  # type: ignore[arg-type]
        calls["rode"] += len(result.claimed)
        return result

    provisioner = service.service.provisioner
    provision = provisioner.provision

    async def counted_provision(*args: object, **kwargs: object) -> object:
        # The Evolution calls of one entry: at most LISTENER_CONCURRENCY at once (SPEC).
        calls["calling"] += 1
        calls["most_calling"] = max(calls["most_calling"], calls["calling"])
        try:
            return await provision(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            calls["calling"] -= 1

    store.claim = counted_claim  # type: ignore[method-assign]
    store.complete_many_and_claim = counted_ride  # type: ignore[method-assign]
    provisioner.provision = counted_provision  # type: ignore[method-assign]
    await service.start()
    try:
        await wait_until(lambda: _all_done(db, users), timeout_s=60)
    finally:
        assert await service.stop() == 0
    creates = _creates(sim)
    assert len(creates) == 200 and set(creates.values()) == {1}
    assert calls["rode"] >= 100  # most of the backlog was claimed by completions
    assert calls["claim"] < calls["ride"]
    assert 4 <= calls["most_calling"] <= 8
