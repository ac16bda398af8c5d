"""The desired state, read from the tables in one consistent snapshot."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.db import queries
from listener.lifecycle.reconcile.model import DesiredState, InstanceRow


def _row(record: dict[str, Any]) -> InstanceRow:
    events = record["webhook_events"]
    return InstanceRow(
        user_id=record["user_id"],
        instance_name=record["instance_name"],
        instance_id=record["instance_id"],
        token=record["instance_token"],
        webhook_url=record["webhook_url"],
        webhook_events=None if events is None else tuple(events),
        server=record["server"],
    )


async def read_desired(pool: AsyncConnectionPool) -> DesiredState:
    """Profiles, creations, instance rows and deletions as of one instant (REPEATABLE READ):
    a signup committing halfway through cannot show up in one table and not another."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(queries.RECONCILE_SNAPSHOT)
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(queries.RECONCILE_PROFILES)
        profiles = frozenset(r["user_id"] for r in await cur.fetchall())
        await cur.execute(queries.RECONCILE_CREATIONS)
        creations: dict[uuid.UUID, str] = {r["user_id"]: r["status"] for r in await cur.fetchall()}
        await cur.execute(queries.RECONCILE_INSTANCE_ROWS)
        rows = {r["user_id"]: _row(r) for r in await cur.fetchall()}
        await cur.execute(queries.RECONCILE_DELETIONS)
        deletions: dict[uuid.UUID, str] = {r["user_id"]: r["status"] for r in await cur.fetchall()}
    return DesiredState(profiles=profiles, creations=creations, instance_rows=rows,
                        deletions=deletions)
