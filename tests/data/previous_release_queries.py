"""The previous release's (v0.1.0, commit e8b42a2) claim/complete/retry/fail/release SQL,
copied verbatim from listener/db/queries.py of that commit.

Why: during a rolling upgrade the old code keeps running against the migrated schema (expand
first, contract in a later release). tests/integration/test_previous_release.py runs these
statements against a database migrated to head. Never edit them to make a test pass: a
failure means a migration broke the release still running.
"""

from __future__ import annotations

from typing import Final

VERSION: Final = "0.1.0"
COMMIT: Final = "e8b42a2"

CHANNEL: Final = "evolution_instance_creation_queue"
TRIGGER_NAME: Final = "on_profile_created_create_evolution_instance"

CLAIM_DUE: Final = """
WITH due AS (
    SELECT id, status AS previous_status
    FROM public.evolution_instance_creation_queue
    WHERE status IN ('pending', 'processing')
      AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE public.evolution_instance_creation_queue AS q
    SET status = 'processing',
        attempts = q.attempts + 1,
        reclaim_count = q.reclaim_count
            + CASE WHEN due.previous_status = 'processing' THEN 1 ELSE 0 END,
        lease_owner = %(owner)s,
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        next_attempt_at = now() + make_interval(secs => %(lease_s)s),
        updated_at = now()
    FROM due
    WHERE q.id = due.id
    RETURNING q.id, q.user_id, q.retry_count, q.attempts, q.reclaim_count,
              due.previous_status, q.created_at
), upcoming AS (
    SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8 AS next_due_s
    FROM public.evolution_instance_creation_queue
    WHERE status IN ('pending', 'processing')
      AND id NOT IN (SELECT id FROM due)
)
SELECT c.id, c.user_id, c.retry_count, c.attempts, c.reclaim_count, c.previous_status,
       c.created_at, u.next_due_s
FROM upcoming AS u
LEFT JOIN claimed AS c ON true
"""

_LEASE_IS_OURS: Final = """
WHERE id = %(id)s
  AND status = 'processing'
  AND lease_owner = %(owner)s
  AND attempts = %(attempt)s
"""

# The instance records and the queue's `completed` commit together, in one statement, for
# a batch of entries finished at about the same time. Each row keeps its own lease check.
COMPLETE_MANY: Final = """
WITH input AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(instance_names)s::text[],
                %(instance_ids)s::text[], %(integrations)s::text[], %(tokens)s::text[])
         AS t(id, attempt, instance_name, instance_id, integration, instance_token)
), done AS (
    UPDATE public.evolution_instance_creation_queue AS q
    SET status = 'completed',
        processed_at = now(),
        error_message = NULL,
        lease_owner = NULL,
        lease_expires_at = NULL,
        next_attempt_at = now(),
        updated_at = now()
    FROM input
    WHERE q.id = input.id
      AND q.status = 'processing'
      AND q.lease_owner = %(owner)s
      AND q.attempts = input.attempt
    RETURNING q.id, q.attempts, q.user_id, q.created_at
), recorded AS (
    INSERT INTO public.evolution_instances AS i
        (user_id, instance_name, instance_id, integration, webhook_url, webhook_events,
         instance_token)
    SELECT done.user_id, input.instance_name, input.instance_id, input.integration,
           %(webhook_url)s, %(webhook_events)s, input.instance_token
    FROM done JOIN input ON input.id = done.id AND input.attempt = done.attempts
    ON CONFLICT (user_id) DO UPDATE
    SET instance_name = EXCLUDED.instance_name,
        instance_id = EXCLUDED.instance_id,
        integration = EXCLUDED.integration,
        webhook_url = EXCLUDED.webhook_url,
        webhook_events = EXCLUDED.webhook_events,
        instance_token = COALESCE(EXCLUDED.instance_token, i.instance_token),
        updated_at = now()
    RETURNING i.user_id
)
SELECT done.id, done.attempts,
       EXTRACT(EPOCH FROM (clock_timestamp() - done.created_at))::float8
FROM done JOIN recorded ON recorded.user_id = done.user_id
"""

# Other replicas are told too: the row is not due yet, but their claim answers with its due
# time, so whichever replica is alive then takes it, even if this one has stopped.
SCHEDULE_RETRY: Final = f"""
WITH scheduled AS (
    UPDATE public.evolution_instance_creation_queue
    SET status = 'pending',
        retry_count = %(retry_count)s,
        error_message = %(error)s,
        next_attempt_at = now() + make_interval(secs => %(delay_s)s),
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    {_LEASE_IS_OURS}
    RETURNING id, user_id
)
SELECT id, pg_catalog.pg_notify('{CHANNEL}',
               json_build_object('id', id, 'user_id', user_id)::text)
FROM scheduled
"""

FAIL: Final = f"""
UPDATE public.evolution_instance_creation_queue
SET status = 'failed',
    retry_count = %(retry_count)s,
    error_message = %(error)s,
    processed_at = now(),
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = now()
{_LEASE_IS_OURS}
RETURNING id
"""

# Not the user's fault (shutdown, API outage, bad key, rate limit): back to pending, no
# retry spent, due after `delay_s`; other replicas are told at once.
RELEASE: Final = f"""
WITH released AS (
    UPDATE public.evolution_instance_creation_queue
    SET status = 'pending',
        error_message = COALESCE(%(error)s, error_message),
        next_attempt_at = now() + make_interval(secs => %(delay_s)s),
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    {_LEASE_IS_OURS}
    RETURNING id, user_id
)
SELECT pg_catalog.pg_notify('{CHANNEL}',
           json_build_object('id', id, 'user_id', user_id)::text)
FROM released
"""

# --- operator commands ------------------------------------------------------------------------


CLAIM_USER: Final = """
UPDATE public.evolution_instance_creation_queue AS q
SET status = 'processing',
    attempts = q.attempts + 1,
    lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s),
    next_attempt_at = now() + make_interval(secs => %(lease_s)s),
    processed_at = NULL,
    updated_at = now()
WHERE q.user_id = %(user_id)s
  AND NOT (q.status = 'processing' AND q.lease_expires_at > now())
RETURNING q.id, q.user_id, q.retry_count, q.attempts, q.reclaim_count, 'pending'::text,
          q.created_at
"""

# The seed's manual retry, verbatim in effect; the queue trigger makes it due and notifies.
