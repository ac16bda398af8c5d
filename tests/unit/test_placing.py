"""The placer (lifecycle/placing.py) over a store double: share under concurrency, sticky,
waits, a server no longer configured, a lost lease. The SQL itself is held by
tests/integration/test_fleet_sql.py and the whole path by test_fleet_service.py."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections import Counter
from dataclasses import replace

import pytest
from pydantic import SecretStr

from listener.core.jobs import LeaseLost
from listener.db.store import ClaimedEntry, ServerUsage
from listener.fleet.servers import ServerSpec, ServerState
from listener.lifecycle.placing import Placer
from listener.policy import ServerWait, UnknownServerError

pytestmark = pytest.mark.unit


class FakeStore:
    """Rows placed in memory; `place` refuses a full server as PLACE does."""

    def __init__(self, capacities: dict[str, int | None]) -> None:
        self.rows: dict[int, str] = {}
        self.capacities = capacities
        self.lost: set[int] = set()
        self.reads = 0

    async def server_usage(self) -> dict[str, ServerUsage]:
        self.reads += 1
        await asyncio.sleep(0.002)
        return {k: ServerUsage(0, v) for k, v in Counter(self.rows.values()).items()}

    async def place(self, entry: ClaimedEntry, server: str, capacity: int | None
                    ) -> tuple[bool, str | None]:
        await asyncio.sleep(0.003)
        if entry.id in self.lost:
            return False, None
        if entry.id not in self.rows:
            used = sum(1 for s in self.rows.values() if s == server)
            if capacity is not None and used >= capacity:
                return True, None
            self.rows[entry.id] = server
        return True, self.rows[entry.id]


def spec(name: str, capacity: int | None, state: ServerState = ServerState.ACTIVE) -> ServerSpec:
    return ServerSpec(name, f"http://{name}.test", SecretStr("k"), capacity, state)


def entry(i: int) -> ClaimedEntry:
    return ClaimedEntry(i, uuid.uuid4(), 0, 1, 0, False, datetime.datetime.now(datetime.UTC))


async def _place_all(placer: Placer, count: int, concurrency: int = 16) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(e: ClaimedEntry) -> None:
        async with gate:
            await placer.server_for(e)

    await asyncio.gather(*(one(entry(i)) for i in range(count)))


async def test_concurrent_placements_spread_by_share_never_on_draining() -> None:
    store = FakeStore({})
    placer = Placer(store, [spec("a", 24), spec("b", 48), spec("c", 100, ServerState.DRAINING)],
                    backing_off=lambda: ())
    await _place_all(placer, 60)
    assert Counter(store.rows.values()) == {"a": 20, "b": 40}
    assert store.reads < 60  # one usage read shared by the entries placed together


async def test_a_backing_off_server_takes_no_new_placement() -> None:
    store = FakeStore({})
    placer = Placer(store, [spec("a", None), spec("b", None)],
                    backing_off=lambda: {"a"})
    await _place_all(placer, 5)
    assert set(store.rows.values()) == {"b"}


async def test_sticky_unknown_full_and_lost() -> None:
    store = FakeStore({})
    placer = Placer(store, [spec("a", 1)], backing_off=lambda: ())
    first = entry(1)
    assert await placer.server_for(first) == "a"
    assert await placer.server_for(replace(first, server="a")) == "a"  # no new placement
    with pytest.raises(UnknownServerError, match="gone"):
        await placer.server_for(replace(entry(2), server="gone"))
    with pytest.raises(ServerWait, match="full"):
        await placer.server_for(entry(3))
    assert placer.watch.full
    store.lost.add(4)
    store.rows.clear()
    placer._usage = None  # the memo would still say full
    with pytest.raises(LeaseLost):
        await placer.server_for(entry(4))
    assert placer.watch.current is None  # placing again after the wait
