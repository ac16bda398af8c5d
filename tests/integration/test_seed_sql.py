"""Every SQL snippet of the seed's monitoring, manual-retry, cleanup and troubleshooting
sections runs unchanged against the schema and does what the seed says."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.pg import TestDatabase

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "000_b36f685b709ebcb4.txt"

PENDING = """SELECT * FROM evolution_instance_creation_queue
WHERE status = 'pending'
ORDER BY created_at DESC;"""

FAILED = """SELECT * FROM evolution_instance_creation_queue
WHERE status = 'failed'
ORDER BY created_at DESC;"""

STATS = """SELECT
  status,
  COUNT(*) as count,
  AVG(retry_count) as avg_retries
FROM evolution_instance_creation_queue
GROUP BY status;"""

MANUAL_RETRY = """UPDATE evolution_instance_creation_queue
SET
  status = 'pending',
  retry_count = 0,
  error_message = NULL,
  updated_at = NOW()
WHERE user_id = 'user_id_here';"""

CLEANUP = """DELETE FROM evolution_instance_creation_queue
WHERE status = 'completed'
AND processed_at < NOW() - INTERVAL '30 days';"""

TRIGGER_CHECK = """SELECT * FROM pg_trigger
WHERE tgname = 'on_profile_created_create_evolution_instance';"""

RECENT = """SELECT * FROM evolution_instance_creation_queue
ORDER BY created_at DESC
LIMIT 10;"""

SNIPPETS = [PENDING, FAILED, STATS, MANUAL_RETRY, CLEANUP, TRIGGER_CHECK, RECENT]


def test_snippets_are_the_seeds_own_text() -> None:
    if not SEED.exists():
        pytest.skip(f"seed file not found at {SEED} (shared/ is beside the checkout in CI)")
    text = SEED.read_text()
    for snippet in SNIPPETS:
        # The seed indents some lines inside ```sql blocks; compare line by line.
        for line in snippet.splitlines():
            assert line.strip() in text, line


def _populate(db: TestDatabase) -> dict[str, list[uuid.UUID]]:
    users: dict[str, list[uuid.UUID]] = {s: [] for s in ("pending", "failed", "completed", "old")}
    for status, count in (("pending", 3), ("failed", 2), ("completed", 4), ("old", 2)):
        for i in range(count):
            user_id = uuid.uuid4()
            users[status].append(user_id)
            db.query("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
            if status == "pending":
                continue
            db.query(
                "UPDATE evolution_instance_creation_queue SET status = %s, retry_count = %s, "
                "error_message = %s, processed_at = now() - %s::interval, "
                "created_at = now() - %s::interval WHERE user_id = %s",
                (
                    "completed" if status == "old" else status,
                    3 if status == "failed" else i % 2,
                    "boom" if status == "failed" else None,
                    "40 days" if status == "old" else "1 hour",
                    f"{i} minutes",
                    user_id,
                ),
            )
    return users


def test_monitoring_queries(db: TestDatabase) -> None:
    users = _populate(db)
    pending = db.query(PENDING)
    assert {r[1] for r in pending} == set(users["pending"])
    assert all(r[2] == "pending" for r in pending)
    created = [r[5] for r in pending]
    assert created == sorted(created, reverse=True)

    failed = db.query(FAILED)
    assert {r[1] for r in failed} == set(users["failed"])
    assert all(r[4] == "boom" and r[3] == 3 for r in failed)

    stats = {r[0]: (r[1], float(r[2])) for r in db.query(STATS)}  # type: ignore[arg-type]
    assert stats["pending"] == (3, 0.0)
    assert stats["failed"] == (2, 3.0)
    assert stats["completed"][0] == 6


def test_manual_retry_resets_a_failed_user(db: TestDatabase) -> None:
    users = _populate(db)
    target = users["failed"][0]
    db.query(MANUAL_RETRY.replace("user_id_here", str(target)))
    row = db.query(
        "SELECT status, retry_count, error_message FROM evolution_instance_creation_queue "
        "WHERE user_id = %s",
        (target,),
    )[0]
    assert row == ("pending", 0, None)
    other = users["failed"][1]
    assert db.scalar(
        "SELECT status FROM evolution_instance_creation_queue WHERE user_id = %s", (other,)
    ) == "failed"


def test_cleanup_deletes_only_completed_entries_older_than_30_days(db: TestDatabase) -> None:
    users = _populate(db)
    db.query(CLEANUP)
    left = {r[0] for r in db.query("SELECT user_id FROM evolution_instance_creation_queue")}
    assert left.isdisjoint(users["old"])
    assert set(users["pending"]) | set(users["failed"]) | set(users["completed"]) == left


def test_troubleshooting_queries(db: TestDatabase) -> None:
    _populate(db)
    triggers = db.query(TRIGGER_CHECK)
    assert len(triggers) == 1
    recent = db.query(RECENT)
    assert len(recent) == 10
    created = [r[5] for r in recent]
    assert created == sorted(created, reverse=True)
