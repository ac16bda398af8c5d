"""Synthetic signups: an open-loop stream at a fixed rate, or a backlog in one statement.

Open loop on purpose: each signup is due at t0 + i / rate whatever the previous one took,
on a small pool of connections, so a slow commit does not hide latency by slowing the
arrivals (the coordinated-omission trap). Each signup is one autocommit INSERT into
`profiles`, as the product's signup flow does; the trigger queues it and notifies.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import psycopg

from listener.dev.demo.stats import summarize

INSERT_PROFILE = "INSERT INTO public.profiles (id) VALUES (%s)"


@dataclass
class LoadReport:
    """What the generator did: who signed up, and whether it kept its schedule."""

    users: list[uuid.UUID] = field(default_factory=list)
    errors: int = 0
    max_lag_ms: float = 0.0
    insert_ms: list[float] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        insert = summarize(self.insert_ms)
        return {
            "signups": len(self.users),
            "errors": self.errors,
            "achieved_rate_per_s": round(len(self.users) / self.duration_s, 1)
            if self.duration_s > 0 else 0.0,
            "max_schedule_lag_ms": round(self.max_lag_ms, 2),
            "insert_ms": insert.as_dict() if insert else None,
        }


async def steady_signups(dsn: str, rate: float, count: int, *, connections: int = 6,
                         report: LoadReport | None = None) -> LoadReport:
    """`count` signups at `rate` per second (open loop); bounded by count and time."""
    out = report or LoadReport()
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True)
             for _ in range(connections)]
    free: asyncio.Queue[psycopg.AsyncConnection[tuple[object, ...]]] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    loop = asyncio.get_running_loop()

    async def one(user_id: uuid.UUID) -> None:
        conn = await free.get()
        started = time.perf_counter()
        try:
            await conn.execute(INSERT_PROFILE, (user_id,))
            out.insert_ms.append((time.perf_counter() - started) * 1000)
            out.users.append(user_id)
        except psycopg.Error:
            out.errors += 1
        finally:
            free.put_nowait(conn)

    tasks: list[asyncio.Task[None]] = []
    start = loop.time() + 0.05
    try:
        for index in range(count):
            due = start + index / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            out.max_lag_ms = max(out.max_lag_ms, (loop.time() - due) * 1000)
            tasks.append(asyncio.create_task(one(uuid.uuid4())))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        out.duration_s = loop.time() - start
    finally:
        for task in tasks:
            task.cancel()
        for conn in conns:
            await conn.close()
    return out


def backlog(dsn: str, count: int) -> None:
    """`count` signups committed in one transaction (the trigger queues each): a backlog
    for the drain cases, queued while no service listens."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.profiles (id) SELECT gen_random_uuid() "
            "FROM generate_series(1, %s)", (count,))
        conn.execute("VACUUM ANALYZE public.evolution_instance_creation_queue")
        conn.execute("VACUUM ANALYZE public.profiles")
