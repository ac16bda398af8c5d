"""The PostgreSQL store and the in-memory store, held to the same behaviour.

The loop's fast unit tests run on the in-memory store; they mean something only if that
store behaves as the real one does. Every assertion below runs against both.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from listener.core.memory_store import MemoryStore
from listener.core.store import JobStore
from listener.db import queries
from listener.db.store import LeaseStore
from tests.harness import wait_until_sync
from tests.pg import TestDatabase


class Backend(Protocol):
    def store(self, owner: str) -> JobStore: ...

    def add(self, due_in_s: float = 0.0) -> int: ...

    def expire_leases(self) -> None: ...

    def row(self, entry_id: int) -> tuple[str, int, str | None, float]:
        """status, retry_count, error_message, seconds until due."""
        ...

    def lock(self, entry_id: int) -> contextlib.AbstractContextManager[None]: ...

    def alive(self, owner: str) -> contextlib.AbstractContextManager[None]:
        """`owner` holds its liveness lock for the block (a live replica)."""
        ...


@dataclass
class MemoryBackend:
    clock_s: float = 1000.0

    def __post_init__(self) -> None:
        self.rows: dict[int, Any] = {}
        self.stores: list[MemoryStore] = []
        self._seed = MemoryStore(clock=self.clock, rows=self.rows)

    def clock(self) -> float:
        return self.clock_s

    def store(self, owner: str) -> JobStore:
        store = MemoryStore(owner, lease_s=60, clock=self.clock, rows=self.rows)
        store.locked = self._seed.locked
        store.live_owners = self._seed.live_owners
        return store

    def add(self, due_in_s: float = 0.0) -> int:
        self.clock_s += 0.001  # rows inserted in order get distinct due times, as in SQL
        return self._seed.add(due_in_s=due_in_s).id

    def expire_leases(self) -> None:
        for row in self.rows.values():
            if row.status == "processing":
                row.next_attempt_at = self.clock_s - 1

    def row(self, entry_id: int) -> tuple[str, int, str | None, float]:
        r = self.rows[entry_id]
        return r.status, r.retry_count, r.error_message, r.next_attempt_at - self.clock_s

    def lock(self, entry_id: int) -> contextlib.AbstractContextManager[None]:
        return _member(self._seed.locked, entry_id)

    def alive(self, owner: str) -> contextlib.AbstractContextManager[None]:
        return _member(self._seed.live_owners, owner)


@contextlib.contextmanager
def _member(items: set[Any], item: Any) -> Iterator[None]:
    """`item` is in `items` for the block (a held row lock, a held liveness lock)."""
    items.add(item)
    try:
        yield
    finally:
        items.discard(item)


@dataclass
class PgBackend:
    db: TestDatabase
    pool: AsyncConnectionPool

    def store(self, owner: str) -> JobStore:
        return LeaseStore(self.pool, owner, lease_s=60)

    def add(self, due_in_s: float = 0.0) -> int:
        [(entry_id,)] = self.db.query(
            "INSERT INTO evolution_instance_creation_queue (user_id, next_attempt_at) "
            "VALUES (%s, clock_timestamp() + make_interval(secs => %s)) RETURNING id",
            (uuid.uuid4(), due_in_s))
        return int(entry_id)  # type: ignore[call-overload]

    def expire_leases(self) -> None:
        self.db.query("UPDATE evolution_instance_creation_queue "
                      "SET next_attempt_at = now() - interval '1 second' "
                      "WHERE status = 'processing'")

    def row(self, entry_id: int) -> tuple[str, int, str | None, float]:
        [(status, retries, error, due_s)] = self.db.query(
            "SELECT status, retry_count, error_message, "
            "EXTRACT(EPOCH FROM next_attempt_at - now())::float8 "
            "FROM evolution_instance_creation_queue WHERE id = %s", (entry_id,))
        return str(status), int(retries), error, float(due_s)  # type: ignore[arg-type, call-overload]

    @contextlib.contextmanager
    def lock(self, entry_id: int) -> Iterator[None]:
        with psycopg.connect(self.db.dsn) as conn:
            conn.execute("SELECT 1 FROM evolution_instance_creation_queue WHERE id = %s "
                         "FOR UPDATE", (entry_id,))
            yield
            conn.rollback()

    @contextlib.contextmanager
    def alive(self, owner: str) -> Iterator[None]:
        """A session of the service's least-privilege role holding the lock, as a replica's
        LISTEN connection does."""
        with psycopg.connect(self.db.service_dsn, autocommit=True) as conn:
            [(held,)] = conn.execute(queries.TRY_LIVENESS_LOCK, {"owner": owner}).fetchall()
            assert held is True
            yield
        # The server ends a closed session (and its lock) a moment after the close.
        wait_until_sync(lambda: not self.db.query(
            "SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
            "AND classid = %s::oid AND objid = pg_catalog.hashtext(%s)::oid",
            (queries.LIVENESS_LOCK_CLASS, owner)), timeout_s=5)


@pytest.fixture(params=["postgresql", "memory"])
def database(request: pytest.FixtureRequest) -> TestDatabase | None:
    """A real database for the PostgreSQL run only (the memory run needs none)."""
    if request.param == "memory":
        return None
    db: TestDatabase = request.getfixturevalue("db")
    return db


@pytest.fixture
async def backend(database: TestDatabase | None) -> AsyncIterator[Backend]:
    if database is None:
        yield MemoryBackend()
        return
    db = database
    async with AsyncConnectionPool(db.service_dsn, kwargs={"autocommit": True},
                                   min_size=1, max_size=2) as pool:
        yield PgBackend(db, pool)


async def test_claims_the_oldest_due_first_up_to_the_limit(backend: Backend) -> None:
    first, second, third = backend.add(), backend.add(), backend.add()
    backend.add(due_in_s=30)
    store = backend.store("a")
    entries, next_due = await store.claim(2)
    assert [e.id for e in entries] == [first, second]
    assert all(not e.reclaimed and e.claim_seq == 1 for e in entries)
    assert next_due is not None and next_due <= 0  # `third` is due and was not taken
    [entry], next_due = await store.claim(5)
    assert entry.id == third
    assert next_due is not None and 25 < next_due <= 30  # the scheduled row


async def test_an_empty_queue_has_no_next_due(backend: Backend) -> None:
    assert await backend.store("a").claim(5) == ([], None)


async def test_a_locked_due_row_is_skipped_but_reported_due(backend: Backend) -> None:
    entry_id = backend.add()
    with backend.lock(entry_id):
        entries, next_due = await backend.store("a").claim(5)
    assert entries == [] and next_due is not None and next_due <= 0


async def test_a_stale_claim_is_fenced_after_a_reclaim(backend: Backend) -> None:
    entry_id = backend.add()
    first, second = backend.store("a"), backend.store("b")
    [mine], _ = await first.claim(5)
    backend.expire_leases()
    [theirs], _ = await second.claim(5)
    assert theirs.id == entry_id and theirs.reclaimed
    assert (theirs.claim_seq, theirs.reclaim_count) == (mine.claim_seq + 1, 1)
    assert await first.schedule_retry(mine, 1, 5.0, "late") is False
    assert await first.fail(mine, 1, "late") is False
    assert await first.release(mine, 0.0, "late") is False
    assert backend.row(entry_id)[0] == "processing"
    assert await second.fail(theirs, 0, "boom") is True


async def test_schedule_retry_makes_it_pending_later_with_the_count(backend: Backend) -> None:
    entry_id = backend.add()
    store = backend.store("a")
    [entry], _ = await store.claim(5)
    assert await store.schedule_retry(entry, 1, 20.0, "flaky") is True
    status, retries, error, due_s = backend.row(entry_id)
    assert (status, retries, error) == ("pending", 1, "flaky") and 15 < due_s <= 20
    assert await store.claim(5) == ([], pytest.approx(due_s, abs=1.0))
    assert await store.schedule_retry(entry, 2, 1.0, "twice") is False  # no longer held


async def test_fail_is_final(backend: Backend) -> None:
    entry_id = backend.add()
    store = backend.store("a")
    [entry], _ = await store.claim(5)
    assert await store.fail(entry, 3, "gave up") is True
    assert backend.row(entry_id)[:3] == ("failed", 3, "gave up")
    assert await store.claim(5) == ([], None)


async def test_release_spends_no_retry_and_keeps_the_last_error(backend: Backend) -> None:
    entry_id = backend.add()
    store = backend.store("a")
    [entry], _ = await store.claim(5)
    assert await store.schedule_retry(entry, 1, 0.0, "flaky") is True
    [entry], _ = await store.claim(5)
    assert await store.release(entry, 0.0, None) is True
    status, retries, error, due_s = backend.row(entry_id)
    assert (status, retries, error) == ("pending", 1, "flaky") and due_s <= 0.5
    [again], _ = await store.claim(5)
    assert (again.retry_count, again.reclaimed, again.claim_seq) == (1, False, 3)


async def test_reclaims_are_counted_per_expired_lease(backend: Backend) -> None:
    backend.add()
    owners = [backend.store(name) for name in ("a", "b", "c")]
    counts = []
    for store in owners:
        [entry], _ = await store.claim(5)
        counts.append(entry.reclaim_count)
        backend.expire_leases()
    assert counts == [0, 1, 2]


async def test_rows_of_a_dead_owner_are_made_due_live_and_own_rows_are_not(
    backend: Backend,
) -> None:
    dead_row, live_row, own_row = backend.add(), backend.add(), backend.add()
    dead, live, me = backend.store("dead"), backend.store("live"), backend.store("me")
    [lost], _ = await dead.claim(1)
    [held], _ = await live.claim(1)
    [mine], _ = await me.claim(1)
    assert (lost.id, held.id, mine.id) == (dead_row, live_row, own_row)
    with backend.alive("live"):
        assert await me.rescue_dead() == 1
        assert await me.rescue_dead() == 0  # already due: not counted twice
        assert await live.rescue_dead() == 1  # "me" holds no lock: its rows look dead too
    status, retries, _, due_s = backend.row(dead_row)
    assert (status, retries) == ("processing", 0) and due_s <= 0.5
    assert backend.row(live_row)[3] > 50  # a live owner's lease is left alone
    # The rescued row is claimed as a reclaim, and the dead owner's claim is fenced.
    other = backend.store("other")
    claimed, _ = await other.claim(5)
    by_id = {e.id: e for e in claimed}
    assert set(by_id) == {dead_row, own_row}
    again = by_id[dead_row]
    assert again.reclaimed and (again.claim_seq, again.reclaim_count) == (lost.claim_seq + 1, 1)
    assert await dead.fail(lost, 0, "late") is False
    assert await dead.release(lost, 0.0, None) is False
    assert await other.fail(again, 0, "done") is True


async def test_rescue_leaves_rows_whose_lease_already_expired_to_the_claim(
    backend: Backend,
) -> None:
    backend.add()
    dead, me = backend.store("dead"), backend.store("me")
    await dead.claim(1)
    backend.expire_leases()
    assert await me.rescue_dead() == 0
    [entry], _ = await me.claim(1)
    assert entry.reclaimed


async def test_a_live_owners_rows_are_rescued_once_its_lock_is_gone(backend: Backend) -> None:
    entry_id = backend.add()
    owner, me = backend.store("owner"), backend.store("me")
    with backend.alive("owner"):
        await owner.claim(1)
        assert await me.rescue_dead() == 0
    assert await me.rescue_dead() == 1
    assert backend.row(entry_id)[3] <= 0.5
