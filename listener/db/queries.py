"""Every SQL statement the service and its commands run, named, in one place.

Transitions out of `processing` are compare-and-set on (id, lease_owner, attempts): the
`attempts` value a claim returned is a fencing token, so a replica that lost its lease (it
expired and another replica reclaimed the row) updates nothing and moves on.
"""

from __future__ import annotations

from typing import Final

CHANNEL: Final = "evolution_instance_creation_queue"
TRIGGER_NAME: Final = "on_profile_created_create_evolution_instance"

# --- migrations ---------------------------------------------------------------------------

MIGRATION_LOCK_KEY: Final = 0x65766F6C69737400  # "evolist\0": one key for every replica
MIGRATION_LOCK: Final = "SELECT pg_catalog.pg_advisory_lock(%(key)s)"
MIGRATION_UNLOCK: Final = "SELECT pg_catalog.pg_advisory_unlock(%(key)s)"
CREATE_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS public.evolution_listener_migrations (
    version text PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
MIGRATIONS_TABLE_EXISTS: Final = (
    "SELECT pg_catalog.to_regclass('public.evolution_listener_migrations') IS NOT NULL"
)
SELECT_APPLIED_MIGRATIONS: Final = (
    "SELECT version, checksum FROM public.evolution_listener_migrations ORDER BY version"
)
RECORD_MIGRATION: Final = """
INSERT INTO public.evolution_listener_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s)
"""

# The runner's table is in `public`, so on Supabase the Data API could reach it: RLS on with
# no policy (only the owner and BYPASSRLS roles read it) and no grant to PUBLIC, anon or
# authenticated. Run on every `migrate`, so tables created by earlier releases get it too.
# 0002 grants SELECT to evolution_listener (doctor, run as the service, reads the table):
# a policy lets that role see the rows. Run after the migrations, which create the role.
# Idempotent.
HARDEN_MIGRATIONS_TABLE: Final = """
DO $$
BEGIN
    ALTER TABLE public.evolution_listener_migrations ENABLE ROW LEVEL SECURITY;
    REVOKE ALL ON public.evolution_listener_migrations FROM PUBLIC;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON public.evolution_listener_migrations FROM anon;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON public.evolution_listener_migrations FROM authenticated;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'evolution_listener')
       AND NOT EXISTS (
           SELECT 1 FROM pg_catalog.pg_policy
           WHERE polname = 'evolution_listener_migrations_read'
             AND polrelid = 'public.evolution_listener_migrations'::regclass) THEN
        CREATE POLICY evolution_listener_migrations_read ON public.evolution_listener_migrations
            FOR SELECT TO evolution_listener USING (true);
    END IF;
END
$$
"""

# Which of a migration's marker objects (listener/db/markers.py) are missing: recognises a
# schema applied outside the runner (supabase/migrations, psql). Catalog reads only, so the
# service's own role can run it.
MISSING_MARKERS: Final = """
SELECT m.kind, m.name, m.parent
FROM unnest(%(kinds)s::text[], %(names)s::text[], %(parents)s::text[]) AS m(kind, name, parent)
WHERE NOT CASE m.kind
    WHEN 'table' THEN pg_catalog.to_regclass(m.name) IS NOT NULL
    WHEN 'index' THEN pg_catalog.to_regclass(m.name) IS NOT NULL
    WHEN 'function' THEN EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname || '.' || p.proname = m.name)
    WHEN 'trigger' THEN EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger t
        WHERE t.tgname = m.name AND t.tgrelid = pg_catalog.to_regclass(m.parent))
    WHEN 'policy' THEN EXISTS (
        SELECT 1 FROM pg_catalog.pg_policy p
        WHERE p.polname = m.name AND p.polrelid = pg_catalog.to_regclass(m.parent))
    WHEN 'column' THEN EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = pg_catalog.to_regclass(m.parent) AND a.attname = m.name
          AND a.attnum > 0 AND NOT a.attisdropped)
    WHEN 'role' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = m.name)
    ELSE false
END
"""

# --- the listener connection ----------------------------------------------------------------

LISTEN: Final = f'LISTEN "{CHANNEL}"'
PROBE: Final = "SELECT 1"
NOTIFY_SELF: Final = "SELECT pg_catalog.pg_notify(%(channel)s, %(payload)s)"

# --- the work loop --------------------------------------------------------------------------

# Due pending rows and processing rows whose lease expired, oldest due first, skipping rows
# another replica holds locked. The partial index on next_attempt_at keeps this proportional
# to the work due. The same statement says how long until the next row not claimed here is
# due (a scheduled retry, a lease to rescue), so a wake-up costs one round trip: one row per
# claimed entry, or one row of NULLs carrying only next_due_s when nothing was claimed.
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

ENQUEUE_USER: Final = """
INSERT INTO public.evolution_instance_creation_queue (user_id)
VALUES (%(user_id)s)
ON CONFLICT (user_id) DO NOTHING
"""

QUEUE_ROW_BY_USER: Final = """
SELECT id, user_id, status, retry_count, error_message, created_at, updated_at, processed_at,
       next_attempt_at, lease_owner, attempts, reclaim_count
FROM public.evolution_instance_creation_queue
WHERE user_id = %(user_id)s
"""

# Claim one given user's row now, whatever its status (for `provision USER_ID`), unless a
# live lease of another worker holds it.
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
RETRY_USER: Final = """
UPDATE public.evolution_instance_creation_queue
SET status = 'pending', retry_count = 0, error_message = NULL, updated_at = now()
WHERE user_id = %(user_id)s AND status IN ('failed', 'completed')
RETURNING id, status
"""

RETRY_ALL_FAILED: Final = """
UPDATE public.evolution_instance_creation_queue
SET status = 'pending', retry_count = 0, error_message = NULL, updated_at = now()
WHERE status = 'failed'
RETURNING id
"""

CLEANUP_BATCH: Final = """
DELETE FROM public.evolution_instance_creation_queue
WHERE id IN (
    SELECT id FROM public.evolution_instance_creation_queue
    WHERE status = 'completed'
      AND processed_at < now() - make_interval(days => %(days)s)
    ORDER BY processed_at
    LIMIT %(batch)s
)
"""

# The seed's monitoring figures.
STATS_BY_STATUS: Final = """
SELECT status, COUNT(*) AS count, AVG(retry_count)::float8 AS avg_retries
FROM public.evolution_instance_creation_queue
GROUP BY status
ORDER BY status
"""

OLDEST_PENDING_AGE_S: Final = """
SELECT EXTRACT(EPOCH FROM (now() - min(created_at)))::float8
FROM public.evolution_instance_creation_queue
WHERE status = 'pending'
"""

RECENT_FAILURES: Final = """
SELECT user_id, retry_count, error_message, processed_at
FROM public.evolution_instance_creation_queue
WHERE status = 'failed'
ORDER BY created_at DESC
LIMIT %(limit)s
"""

# Cheap gauges for /metrics: only the statuses that still carry work, through the partial
# indexes (a full GROUP BY over a million completed rows is not for every scrape).
WORK_DEPTH: Final = """
SELECT
    count(*) FILTER (WHERE status = 'pending') AS pending,
    count(*) FILTER (WHERE status = 'processing') AS processing,
    COALESCE(EXTRACT(EPOCH FROM (now() - min(created_at) FILTER (WHERE status = 'pending'))),
             0)::float8 AS oldest_pending_age_s
FROM public.evolution_instance_creation_queue
WHERE status IN ('pending', 'processing')
"""
FAILED_COUNT: Final = """
SELECT count(*) FROM public.evolution_instance_creation_queue WHERE status = 'failed'
"""

TRIGGER_STATE: Final = """
SELECT t.tgenabled
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = %(name)s AND n.nspname = 'public' AND c.relname = 'profiles'
"""
