"""Writing an outcome through a database blip, and what the service knows of the database.

A transition that never lands is not lost work: the lease expires and another claim redoes
the (idempotent) attempt. So a settle rides out a short outage, then gives up.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from listener.text import one_line

log = logging.getLogger("listener.worker")
T = TypeVar("T")

DB_ERRORS = (psycopg.Error, PoolTimeout, OSError)
DB_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)


def is_connectivity_error(error: BaseException) -> bool:
    """The database could not be reached or the connection broke (worth waiting for)."""
    return isinstance(error, psycopg.OperationalError | PoolTimeout | OSError)


class DatabaseHealth:
    """The last database error seen by the loop or a settle (None: reachable); readiness
    reports it. Logged once per outage, not once per statement."""

    def __init__(self) -> None:
        self.error: str | None = None

    def failed(self, error: BaseException) -> None:
        if self.error is None:
            log.error("database error", extra={"error": one_line(error)})
        self.error = one_line(error)

    def ok(self) -> None:
        if self.error is not None:
            log.info("database reachable again")
        self.error = None


async def settle(action: Callable[[], Awaitable[T]], health: DatabaseHealth,
                 user_id: uuid.UUID, delays_s: tuple[float, ...] = DB_RETRY_DELAYS_S
                 ) -> T | None:
    """Run one transition, riding out a short database blip; None when it never landed."""
    for delay in (*delays_s, None):
        try:
            result = await action()
            health.ok()
            return result
        except DB_ERRORS as error:
            if is_connectivity_error(error):
                health.failed(error)
            if not is_connectivity_error(error) or delay is None:
                # A refused statement (a data error) cannot succeed by retrying, and the
                # database is not unreachable. Either way the lease expires; a reclaim retries.
                log.error("could not record the outcome; the lease will expire",
                          extra={"user_id": str(user_id), "error": one_line(error)})
                return None
            await asyncio.sleep(delay)
    return None
