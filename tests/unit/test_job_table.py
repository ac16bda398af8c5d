"""The claim/settle SQL is one template: a second queue table gets it by naming itself."""

from __future__ import annotations

import pytest

from listener.db import queries
from listener.db.queries import JobTable

pytestmark = pytest.mark.unit

DELETIONS = JobTable(table="evolution_instance_deletion_queue",
                     channel="evolution_instance_deletion_queue")
STATEMENTS = ("claim_due", "claim_user", "schedule_retry", "fail", "release", "work_depth",
              "failed_count", "rescue_dead", "cleanup_batch")


@pytest.mark.parametrize("name", STATEMENTS)
def test_a_second_table_gets_every_statement_on_its_own_table(name: str) -> None:
    sql = getattr(DELETIONS, name)
    assert "public.evolution_instance_deletion_queue" in sql
    assert "creation_queue" not in sql


@pytest.mark.parametrize("name", ("schedule_retry", "fail", "release"))
def test_every_transition_out_of_processing_is_fenced_on_the_claim(name: str) -> None:
    sql = getattr(DELETIONS, name)
    assert queries.LEASE_IS_OURS in sql
    assert "attempts = %(claim_seq)s" in sql


@pytest.mark.parametrize("name", ("schedule_retry", "release", "rescue_dead"))
def test_other_replicas_are_told_on_the_tables_own_channel(name: str) -> None:
    sql = getattr(DELETIONS, name)
    assert "evolution_listener_notify('evolution_instance_deletion_queue', id, user_id)" in sql

