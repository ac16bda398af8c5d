"""Rolling upgrade rule: every migration works with the previous release's code still running
(expand first, contract in a later release). The previous release's own claim, complete,
retry, fail and release statements (tests/data/previous_release_queries.py, verbatim) run
against a database migrated to head."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.data import previous_release_queries as old
from tests.harness import queue_rows, signup
from tests.pg import TestDatabase

OWNER = "v0.1.0-replica"


def _claim(conn: psycopg.Connection[Any], limit: int) -> list[tuple[Any, ...]]:
    rows = conn.execute(old.CLAIM_DUE, {"limit": limit, "owner": OWNER, "lease_s": 60.0}
                        ).fetchall()
    return [row for row in rows if row[0] is not None]


def test_the_previous_releases_statements_work_on_the_head_schema(db: TestDatabase) -> None:
    users = signup(db.dsn, 4)
    # The old code runs as the service's role, with the grants head's migrations give it.
    with psycopg.connect(db.service_dsn, autocommit=True) as conn:
        claimed = _claim(conn, 10)
        assert sorted(row[1] for row in claimed) == sorted(users)
        by_user = {row[1]: row for row in claimed}
        done, retried, failed, released = (by_user[u] for u in users)

        completed = conn.execute(old.COMPLETE_MANY, {
            "ids": [done[0]], "attempts": [done[3]], "instance_names": [f"evo-{done[1]}"],
            "instance_ids": ["iid-1"], "integrations": ["WHATSAPP-BAILEYS"], "tokens": ["t"],
            "owner": OWNER, "webhook_url": "https://x.supabase.co/functions/v1/h",
            "webhook_events": ["QRCODE_UPDATED"],
        }).fetchall()
        assert [row[0] for row in completed] == [done[0]]

        scheduled = conn.execute(old.SCHEDULE_RETRY, {
            "id": retried[0], "owner": OWNER, "attempt": retried[3], "retry_count": 1,
            "error": "HTTP 500", "delay_s": 0.0}).fetchall()
        assert [row[0] for row in scheduled] == [retried[0]]

        gave_up = conn.execute(old.FAIL, {
            "id": failed[0], "owner": OWNER, "attempt": failed[3], "retry_count": 0,
            "error": "HTTP 400"}).fetchall()
        assert gave_up == [(failed[0],)]

        conn.execute(old.RELEASE, {"id": released[0], "owner": OWNER, "attempt": released[3],
                                   "error": None, "delay_s": 0.0})

        # A stale fencing token (an older claim) changes nothing, as before.
        assert conn.execute(old.FAIL, {"id": done[0], "owner": OWNER, "attempt": done[3],
                                       "retry_count": 0, "error": "late"}).fetchall() == []

        # The retried and the released rows are due again and claimable by the old claim.
        again = _claim(conn, 10)
        assert sorted(row[1] for row in again) == sorted([retried[1], released[1]])

        user = uuid.uuid4()
        db.query("INSERT INTO profiles (id) VALUES (%s)", (user,))
        [one] = conn.execute(old.CLAIM_USER, {"user_id": user, "owner": OWNER,
                                              "lease_s": 60.0}).fetchall()
        assert one[1] == user

    rows = queue_rows(db.dsn)
    assert rows[done[1]]["status"] == "completed"
    assert rows[failed[1]]["status"] == "failed" and rows[failed[1]]["error_message"] == "HTTP 400"
    assert rows[retried[1]]["retry_count"] == 1
    assert db.scalar("SELECT instance_id FROM evolution_instances WHERE user_id = %s",
                     (done[1],)) == "iid-1"
