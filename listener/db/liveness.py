"""The liveness lock: how a process that claims rows says "I am alive" to PostgreSQL.

A session-level advisory lock per owner (see `queries.TRY_LIVENESS_LOCK`): while the session
lives, other replicas see it in `pg_locks` and leave the owner's rows alone; when the process
dies its session ends and the lock with it, and their rescuer makes its rows due at once.
The service holds it on its LISTEN connection (`listener.wakeup`); the `drain` and
`provision` commands, which claim without one, hold it on a connection of their own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import psycopg

from listener.db import queries
from listener.db.pool import KEEPALIVE_KWARGS

log = logging.getLogger("listener.liveness")

LOCK_APPLICATION_NAME = "evolution-listener:liveness"


async def try_liveness_lock(conn: psycopg.AsyncConnection[tuple[object, ...]],
                            owner: str) -> bool:
    """Take the owner's lock on this session without waiting. False means the key is held
    by another session: an older session of this owner the server has not noticed is gone
    yet, or an owner whose hash collides. Either way the owner's rows look alive to the
    rescuer, so it is safe to work; the caller tries again later."""
    cursor = await conn.execute(queries.TRY_LIVENESS_LOCK, {"owner": owner})
    row = await cursor.fetchone()
    return bool(row and row[0])


@contextlib.asynccontextmanager
async def liveness_lock_held(dsn: str, owner: str) -> AsyncIterator[bool]:
    """A dedicated connection holding `owner`'s liveness lock for the block (a command that
    claims rows without a LISTEN connection). Yields whether the lock was granted."""
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=10,
        application_name=LOCK_APPLICATION_NAME, **KEEPALIVE_KWARGS)
    try:
        held = await try_liveness_lock(conn, owner)
        if not held:
            log.warning("liveness lock key held by another session; this command's rows "
                        "fall back to the lease if it dies", extra={"owner": owner})
        yield held
    finally:
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.close()
