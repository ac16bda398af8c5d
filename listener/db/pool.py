"""The one way this project opens connections: a pool with TCP keepalives.

Both the service and the operator commands use it, so a command run against a database
behind a dropped NAT entry gives up as quickly as the service does, instead of hanging on
the kernel's ~15 minutes of retransmissions.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

APPLICATION_NAME = "evolution-listener"

KEEPALIVE_KWARGS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    # Unacknowledged data (a query sent into a dead connection) gives up after 10 s instead
    # of the kernel's ~15 minutes of retransmissions; keepalives do not cover that case.
    "tcp_user_timeout": 10_000,
}


def make_pool(dsn: str, *, max_size: int, min_size: int = 2,
              timeout_s: float = 10.0) -> AsyncConnectionPool:
    """A closed pool (the caller opens it) of autocommit connections: every statement of
    the store is one atomic transition by itself."""
    return AsyncConnectionPool(
        dsn,
        min_size=min(min_size, max_size),
        max_size=max_size,
        open=False,
        timeout=timeout_s,
        name=APPLICATION_NAME,
        kwargs={"autocommit": True, "application_name": APPLICATION_NAME,
                **KEEPALIVE_KWARGS},
    )
