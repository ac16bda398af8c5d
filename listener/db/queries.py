"""Every SQL statement the service and its commands run, named, in one place.

Transitions out of `processing` are compare-and-set on (id, lease_owner, attempts): the
`attempts` value a claim returned (`claim_seq` in Python) is a fencing token, so a replica
that lost its lease (it expired and another replica reclaimed the row) updates nothing and
moves on. The claim and settle statements are generated per job table from one template
(`JobTable`), so every kind of job shares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
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

# --- liveness: who is alive, read from PostgreSQL itself (SPEC §4) ---------------------------

# Every replica (and every `drain`/`provision` command) holds a session-level advisory lock
# keyed (LIVENESS_LOCK_CLASS, hashtext(owner)) on a connection it keeps. The lock ends with
# the session, so a process that dies (its sockets close) loses it at once and `pg_locks`
# tells the other replicas, without superuser rights. In `pg_locks` a two-int4 advisory key
# shows as classid = the class, objid = the hash as an unsigned oid, objsubid = 2. The class
# differs from PLACEMENT_LOCK_CLASS and from the upper half of the migration and reconcile
# keys (single bigint keys show with objsubid = 1 anyway).
LIVENESS_LOCK_CLASS: Final = 0x65766C69  # "evli"
TRY_LIVENESS_LOCK: Final = (
    f"SELECT pg_catalog.pg_try_advisory_lock({LIVENESS_LOCK_CLASS}, "
    "pg_catalog.hashtext(%(owner)s)) AS held"
)

# --- the work loop: one template per job table -----------------------------------------------

# Rows placed on an Evolution server that backs off (or is rate-paused) are not claimed,
# neither counted as upcoming (the loop would wake for rows it skips): that server's work
# waits there and resumes when its breaker closes (SPEC §10). Unplaced rows (NULL) are
# always claimable; placement then avoids the paused servers.
_NOT_PAUSED: Final = "(server IS NULL OR server <> ALL(%(paused)s::text[]))"


@dataclass(frozen=True)
class JobTable:
    """A queue table with the lease columns (status, next_attempt_at, lease_owner,
    lease_expires_at, attempts, reclaim_count, retry_count, error_message, processed_at, a
    unique user_id) and the channel its NOTIFYs go to. The claim, fencing and settle
    statements below are generated from it, so a second kind of job (deletions) reuses the
    machinery by naming its table, instead of copying the SQL. What differs per kind (how an
    entry completes) stays a statement of its own."""

    table: str
    channel: str
    # Extra condition on which due rows may be claimed (SQL starting with AND; the row is
    # `q`): a kind's own rule that keeps an entry waiting without changing the template.
    claim_guard: str = ""

    @property
    def qualified(self) -> str:
        return f"public.{self.table}"

    def _claim_ctes(self, also_skip: str = "") -> str:
        """`due`, `claimed` and `upcoming`: the claim as CTEs, shared by `claim_due` and
        `complete_then_claim` (one text, so the two cannot drift apart)."""
        return f"""due AS (
    SELECT id, status AS previous_status
    FROM {self.qualified} AS q
    WHERE status IN ('pending', 'processing')
      AND next_attempt_at <= now(){self.claim_guard}
      AND {_NOT_PAUSED}{also_skip}
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {self.qualified} AS q
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
              due.previous_status, q.created_at, q.server
), upcoming AS (
    SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8 AS next_due_s
    FROM {self.qualified} AS q
    WHERE status IN ('pending', 'processing')
      AND {_NOT_PAUSED}{also_skip}
      AND id NOT IN (SELECT id FROM due)
)"""

    @cached_property
    def claim_due(self) -> str:
        """Due pending rows and processing rows whose lease expired, oldest due first,
        skipping rows another replica holds locked. The partial index on next_attempt_at
        keeps this proportional to the work due. The same statement says how long until the
        next row not claimed here is due (a scheduled retry, a lease to rescue), so a wake-up
        costs one round trip: one row per claimed entry, or one row of NULLs carrying only
        next_due_s when nothing was claimed."""
        return f"""
WITH {self._claim_ctes()}
SELECT c.id, c.user_id, c.retry_count, c.attempts AS claim_seq, c.reclaim_count,
       c.previous_status, c.created_at, c.server, u.next_due_s
FROM upcoming AS u
LEFT JOIN claimed AS c ON true
"""

    def complete_then_claim(self, completion_ctes: str, completion_result: str) -> str:
        """A kind's batch completion and a claim of up to %(limit)s due rows, in one
        statement and one commit. While capacity is the limit (a drain), the slots a batch
        frees are refilled by the statement that completes it, instead of a claim round
        trip after it: half the statements per entry, and no gap between a completion and
        the next claim.

        `completion_ctes` are the completion's CTEs (they take the batch's row ids as
        %(ids)s) and `completion_result` its final SELECT of (id, claim_seq, latency_s).
        The claim skips the batch's own rows: one statement must not update a row twice
        (one of our expired leases would be both completed and reclaimed), and they are
        done, so they are not the next due either. Answers one row
        per completion (part = 'completed'), then the claim's rows as `claim_due` answers
        them (part = 'claimed')."""
        skip_batch = "\n      AND q.id <> ALL(%(ids)s::bigint[])"
        return f"""
WITH {completion_ctes},
finished AS ({completion_result}),
{self._claim_ctes(skip_batch)}
SELECT 'completed'::text AS part, f.id, f.claim_seq, f.latency_s,
       NULL::uuid AS user_id, NULL::integer AS retry_count, NULL::integer AS reclaim_count,
       NULL::text AS previous_status, NULL::timestamptz AS created_at, NULL::text AS server,
       NULL::float8 AS next_due_s
FROM finished AS f
UNION ALL
SELECT 'claimed'::text, c.id, c.attempts, NULL::float8, c.user_id, c.retry_count,
       c.reclaim_count, c.previous_status, c.created_at, c.server, u.next_due_s
FROM upcoming AS u
LEFT JOIN claimed AS c ON true
"""

    @cached_property
    def claim_user(self) -> str:
        """Claim one given user's row now, whatever its status (for `provision USER_ID`),
        unless a live lease of another worker holds it."""
        return f"""
UPDATE {self.qualified} AS q
SET status = 'processing',
    attempts = q.attempts + 1,
    lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s),
    next_attempt_at = now() + make_interval(secs => %(lease_s)s),
    processed_at = NULL,
    updated_at = now()
WHERE q.user_id = %(user_id)s
  AND NOT (q.status = 'processing' AND q.lease_expires_at > now())
RETURNING q.id, q.user_id, q.retry_count, q.attempts AS claim_seq, q.reclaim_count,
          'pending'::text AS previous_status, q.created_at, q.server
"""

    @cached_property
    def schedule_retry(self) -> str:
        """Other replicas are told too: the row is not due yet, but their claim answers with
        its due time, so whichever replica is alive then takes it, even if this one has
        stopped."""
        return f"""
WITH scheduled AS (
    UPDATE {self.qualified}
    SET status = 'pending',
        retry_count = %(retry_count)s,
        error_message = %(error)s,
        next_attempt_at = now() + make_interval(secs => %(delay_s)s),
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    {LEASE_IS_OURS}
    RETURNING id, user_id
)
SELECT id, public.evolution_listener_notify('{self.channel}', id, user_id)
FROM scheduled
"""

    @cached_property
    def fail(self) -> str:
        return f"""
UPDATE {self.qualified}
SET status = 'failed',
    retry_count = %(retry_count)s,
    error_message = %(error)s,
    processed_at = now(),
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = now()
{LEASE_IS_OURS}
RETURNING id
"""

    @cached_property
    def release(self) -> str:
        """Not the user's fault (shutdown, API outage, bad key, rate limit): back to
        pending, no retry spent, due after `delay_s`; other replicas are told at once."""
        return f"""
WITH released AS (
    UPDATE {self.qualified}
    SET status = 'pending',
        error_message = COALESCE(%(error)s, error_message),
        next_attempt_at = now() + make_interval(secs => %(delay_s)s),
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    {LEASE_IS_OURS}
    RETURNING id, user_id
)
SELECT id, public.evolution_listener_notify('{self.channel}', id, user_id)
FROM released
"""

    @cached_property
    def rescue_dead(self) -> str:
        """Make due the `processing` rows whose owner holds no liveness lock (its process
        died), so a claim takes them as a reclaim within seconds instead of after the
        lease. Due as of their insert, so they keep their place in the oldest-first claim
        order instead of queueing behind a backlog that arrived after them. Status, owner
        and `attempts` stay: the claim bumps `attempts` as for any expired lease, so the
        fencing is unchanged, and a late transition of an owner that was only cut off
        updates nothing once the row is claimed again. Never this replica's rows; never
        rows already due (the claim takes those anyway). Reads only `processing` rows
        through the partial index on next_attempt_at. An owner whose hash collides with a
        live owner's looks alive: its rows wait for the lease, as before. Every replica is
        told, so whichever has capacity takes the rows."""
        return f"""
WITH live AS MATERIALIZED (
    SELECT l.objid
    FROM pg_catalog.pg_locks AS l
    WHERE l.locktype = 'advisory'
      AND l.classid = {LIVENESS_LOCK_CLASS}::oid
      AND l.objsubid = 2
      AND l.granted
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                        WHERE d.datname = pg_catalog.current_database())
), dead AS (
    SELECT q.id
    FROM {self.qualified} AS q
    WHERE q.status = 'processing'
      AND q.next_attempt_at > now()
      AND q.lease_expires_at > now()
      AND q.lease_owner <> %(owner)s
      AND NOT EXISTS (
          SELECT 1 FROM live
          WHERE live.objid = pg_catalog.hashtext(q.lease_owner)::oid
      )
    FOR UPDATE OF q SKIP LOCKED
), rescued AS (
    UPDATE {self.qualified} AS q
    SET next_attempt_at = q.created_at,
        updated_at = now()
    FROM dead
    WHERE q.id = dead.id
    RETURNING q.id, q.user_id
)
SELECT id, public.evolution_listener_notify('{self.channel}', id, user_id)
FROM rescued
"""

    @cached_property
    def work_depth(self) -> str:
        """Cheap gauges for /metrics: only the statuses that still carry work, through the
        partial indexes (a full GROUP BY over a million completed rows is not for every
        scrape)."""
        return f"""
SELECT
    count(*) FILTER (WHERE status = 'pending') AS pending,
    count(*) FILTER (WHERE status = 'processing') AS processing,
    COALESCE(EXTRACT(EPOCH FROM (now() - min(created_at) FILTER (WHERE status = 'pending'))),
             0)::float8 AS oldest_pending_age_s
FROM {self.qualified}
WHERE status IN ('pending', 'processing')
"""

    @cached_property
    def cleanup_batch(self) -> str:
        """The seed's cleanup: one batch of `completed` rows older than the cutoff (the
        partial index on processed_at), so no long lock is held on the queue."""
        return f"""
DELETE FROM {self.qualified}
WHERE id IN (
    SELECT id FROM {self.qualified}
    WHERE status = 'completed'
      AND processed_at < now() - make_interval(days => %(days)s)
    ORDER BY processed_at
    LIMIT %(batch)s
)
"""

    @cached_property
    def failed_count(self) -> str:
        return f"SELECT count(*) AS failed FROM {self.qualified} WHERE status = 'failed'\n"


# Transitions out of `processing` are compare-and-set on the claim: the row's `attempts`
# column is the claim's fencing token (claim_seq in Python; the column keeps its name).
LEASE_IS_OURS: Final = """
WHERE id = %(id)s
  AND status = 'processing'
  AND lease_owner = %(owner)s
  AND attempts = %(claim_seq)s
"""

CREATION_QUEUE: Final = JobTable(table="evolution_instance_creation_queue", channel=CHANNEL)

CLAIM_DUE: Final = CREATION_QUEUE.claim_due
CLAIM_USER: Final = CREATION_QUEUE.claim_user
SCHEDULE_RETRY: Final = CREATION_QUEUE.schedule_retry
FAIL: Final = CREATION_QUEUE.fail
RELEASE: Final = CREATION_QUEUE.release
WORK_DEPTH: Final = CREATION_QUEUE.work_depth
FAILED_COUNT: Final = CREATION_QUEUE.failed_count

# --- what completes a creation ------------------------------------------------------

# The instance records and the queue's `completed` commit together, in one statement, for
# a batch of entries finished at about the same time. Each row keeps its own lease check.
COMPLETE_MANY_CTES: Final = """
input AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(claim_seqs)s::integer[], %(instance_names)s::text[],
                %(instance_ids)s::text[], %(integrations)s::text[], %(tokens)s::text[])
         AS t(id, claim_seq, instance_name, instance_id, integration, instance_token)
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
      AND q.attempts = input.claim_seq
    RETURNING q.id, q.attempts, q.user_id, q.created_at, q.server
), recorded AS (
    INSERT INTO public.evolution_instances AS i
        (user_id, instance_name, instance_id, integration, webhook_url, webhook_events,
         instance_token, server)
    SELECT done.user_id, input.instance_name, input.instance_id, input.integration,
           %(webhook_url)s, %(webhook_events)s, input.instance_token,
           COALESCE(done.server, 'default')
    FROM done JOIN input ON input.id = done.id AND input.claim_seq = done.attempts
    ON CONFLICT (user_id) DO UPDATE
    SET instance_name = EXCLUDED.instance_name,
        instance_id = EXCLUDED.instance_id,
        integration = EXCLUDED.integration,
        webhook_url = EXCLUDED.webhook_url,
        webhook_events = EXCLUDED.webhook_events,
        instance_token = COALESCE(EXCLUDED.instance_token, i.instance_token),
        server = EXCLUDED.server,
        updated_at = now()
    RETURNING i.user_id
)
"""
COMPLETE_MANY_RESULT: Final = """
SELECT done.id, done.attempts AS claim_seq,
       EXTRACT(EPOCH FROM (clock_timestamp() - done.created_at))::float8 AS latency_s
FROM done JOIN recorded ON recorded.user_id = done.user_id
"""
COMPLETE_MANY: Final = f"WITH {COMPLETE_MANY_CTES}{COMPLETE_MANY_RESULT}"
# The same batch completion, also claiming up to %(limit)s due creations (a drain).
COMPLETE_MANY_AND_CLAIM: Final = CREATION_QUEUE.complete_then_claim(
    COMPLETE_MANY_CTES, COMPLETE_MANY_RESULT)


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

CLEANUP_BATCH: Final = CREATION_QUEUE.cleanup_batch

# The seed's monitoring figures.
STATS_BY_STATUS: Final = """
SELECT status, COUNT(*) AS count, AVG(retry_count)::float8 AS avg_retries
FROM public.evolution_instance_creation_queue
GROUP BY status
ORDER BY status
"""

OLDEST_PENDING_AGE_S: Final = """
SELECT EXTRACT(EPOCH FROM (now() - min(created_at)))::float8 AS age_s
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

TRIGGER_STATE: Final = """
SELECT t.tgenabled
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = %(name)s AND n.nspname = 'public' AND c.relname = 'profiles'
"""

# --- many Evolution API servers (SPEC §10) ---------------------------------------------------

# A creation entry placed on a server and not finished holds a place there. An entry whose
# user already has an instance row (a manual retry of a completed entry, `provision
# --force`) is counted once, through that row.
_IN_FLIGHT_ON_A_SERVER: Final = """
q.server IS NOT NULL
  AND q.status IN ('pending', 'processing')
  AND NOT EXISTS (SELECT 1 FROM public.evolution_instances AS i WHERE i.user_id = q.user_id)
"""

# Per server: instances recorded there and placements in flight; their sum is the `used`
# figure of placement, the two apart are what `stats` and the metrics show. One round trip
# per claimed batch; servers holding nothing have no row.
SERVER_USAGE: Final = f"""
SELECT server,
       sum(instances)::bigint AS instances,
       sum(in_flight)::bigint AS in_flight
FROM (
    SELECT i.server, count(*) AS instances, 0 AS in_flight
    FROM public.evolution_instances AS i
    GROUP BY i.server
    UNION ALL
    SELECT q.server, 0, count(*)
    FROM public.evolution_instance_creation_queue AS q
    WHERE {_IN_FLIGHT_ON_A_SERVER}
    GROUP BY q.server
) AS per_source
GROUP BY server
ORDER BY server
"""

# Placements on one bounded server serialise on this transaction-level lock (key: a class
# plus the server name's hash), taken just before PLACE in the same transaction: PLACE then
# counts under a snapshot that sees every earlier placement there committed, so replicas
# placing at once cannot together overshoot the capacity. Not needed for unlimited servers.
PLACEMENT_LOCK_CLASS: Final = 0x65766F6C  # "evol"
PLACE_LOCK: Final = f"""
SELECT pg_catalog.pg_advisory_xact_lock({PLACEMENT_LOCK_CLASS}, pg_catalog.hashtext(%(server)s))
"""

# A user who already has an instance (a manual retry or `provision --force` of an entry
# completed before the fleet existed) keeps the server of that instance, whatever was chosen.
# Write the chosen server to a claimed entry only when it has none yet (compare-and-set on
# the lease's fencing token as every transition, and on `server IS NULL`), and only while
# the server has room (`capacity` NULL = unlimited). Answers the server the entry is placed
# on: the new choice, or an earlier one that a retry, a reclaim or another replica must
# keep. No row: the lease is no longer ours. A NULL server: the server filled up meanwhile
# (place again with fresh counts, or wait).
PLACE: Final = f"""
WITH used AS (
    SELECT (SELECT count(*) FROM public.evolution_instances AS i
            WHERE i.server = %(server)s)
         + (SELECT count(*) FROM public.evolution_instance_creation_queue AS q
            WHERE q.server = %(server)s AND {_IN_FLIGHT_ON_A_SERVER}) AS n
), recorded AS (
    SELECT i.server
    FROM public.evolution_instances AS i
    JOIN public.evolution_instance_creation_queue AS q ON q.user_id = i.user_id
    WHERE q.id = %(id)s
), placed AS (
    UPDATE public.evolution_instance_creation_queue
    SET server = COALESCE((SELECT server FROM recorded), %(server)s),
        updated_at = now()
    {LEASE_IS_OURS}
      AND server IS NULL
      AND (EXISTS (SELECT 1 FROM recorded)
           OR %(capacity)s::integer IS NULL OR (SELECT n FROM used) < %(capacity)s::integer)
    RETURNING server
)
SELECT COALESCE((SELECT server FROM placed), server) AS server
FROM public.evolution_instance_creation_queue
{LEASE_IS_OURS}
"""

# =============================================================================================
# --- the instance's whole life: deprovision and reconcile (SPEC §9; migration 0005) ---------
# =============================================================================================

DELETION_CHANNEL: Final = "evolution_instance_deletion_queue"
DELETION_TRIGGER_NAME: Final = "on_profile_deleted_delete_evolution_instance"
LISTEN_DELETIONS: Final = f'LISTEN "{DELETION_CHANNEL}"'
# The LISTEN statement of each channel the service may wake on.
LISTEN_ON: Final = {CHANNEL: LISTEN, DELETION_CHANNEL: LISTEN_DELETIONS}

# The race rule (PLAN, SPEC §9): a deletion is not claimable while the user's creation is
# in flight (`processing` under a live lease). It waits for that creation to finish and then
# deletes what it created, so no instance is left behind. While it waits its row reads as
# due but not claimable, so the loop polls it with the locked-row back-off (<= 1.6 s).
_NO_CREATION_IN_FLIGHT: Final = """
      AND NOT EXISTS (
          SELECT 1 FROM public.evolution_instance_creation_queue AS c
          WHERE c.user_id = q.user_id
            AND c.status = 'processing'
            AND c.lease_expires_at > now())"""

DELETION_QUEUE: Final = JobTable(table="evolution_instance_deletion_queue",
                                 channel=DELETION_CHANNEL, claim_guard=_NO_CREATION_IN_FLIGHT)

# What a claimed deletion deletes: the recorded name (NULL: the service derives it) and the
# server it lives on (0006/0007; NULL: the single server). Not in the shared claim's answer,
# which is the same for every kind.
DELETION_TARGET: Final = """
SELECT instance_name, server
FROM public.evolution_instance_deletion_queue
WHERE id = %(id)s
"""

# A deletion done at the server: `completed`, and the user's instance row and creation row
# removed, in one statement (one transaction), fenced on the claim like every transition.
# The rows are removed only while the profile is still gone: a user who signed up again
# (same id) meanwhile owns a new creation row that must not be lost. A creation that
# completed after the profile was deleted (the race rule let it finish) is removed here.
COMPLETE_DELETION: Final = f"""
WITH done AS (
    UPDATE public.evolution_instance_deletion_queue
    SET status = 'completed',
        processed_at = now(),
        error_message = NULL,
        lease_owner = NULL,
        lease_expires_at = NULL,
        next_attempt_at = now(),
        updated_at = now()
    {LEASE_IS_OURS}
    RETURNING id, user_id, created_at
), gone AS (
    SELECT done.user_id FROM done
    WHERE NOT EXISTS (SELECT 1 FROM public.profiles AS p WHERE p.id = done.user_id)
), instance_rows AS (
    DELETE FROM public.evolution_instances AS i USING gone
    WHERE i.user_id = gone.user_id
    RETURNING i.user_id
), creation_rows AS (
    DELETE FROM public.evolution_instance_creation_queue AS c USING gone
    WHERE c.user_id = gone.user_id
    RETURNING c.user_id
)
SELECT done.id,
       EXTRACT(EPOCH FROM (clock_timestamp() - done.created_at))::float8 AS latency_s,
       (SELECT count(*) FROM instance_rows) AS instance_rows,
       (SELECT count(*) FROM creation_rows) AS creation_rows
FROM done
"""

# `cleanup`: finished deletions older than the cutoff, in batches, like the creation queue's.
CLEANUP_DELETIONS_BATCH: Final = DELETION_QUEUE.cleanup_batch

# One key for every replica: only one reconciles at a time (session lock, dedicated conn).
RECONCILE_LOCK_KEY: Final = 0x65766F6C72656300  # "evolrec\0"
RECONCILE_TRY_LOCK: Final = "SELECT pg_catalog.pg_try_advisory_lock(%(key)s) AS locked"
RECONCILE_UNLOCK: Final = "SELECT pg_catalog.pg_advisory_unlock(%(key)s) AS unlocked"

# The desired state, read by name (dict_row). One pass each; cost grows with the fleet.
RECONCILE_PROFILES: Final = "SELECT id AS user_id FROM public.profiles"
RECONCILE_CREATIONS: Final = """
SELECT user_id, status FROM public.evolution_instance_creation_queue
"""
RECONCILE_INSTANCE_ROWS: Final = """
SELECT user_id, instance_name, instance_id, instance_token, webhook_url, webhook_events,
       server
FROM public.evolution_instances
"""
RECONCILE_DELETIONS: Final = """
SELECT user_id, status FROM public.evolution_instance_deletion_queue
"""

# unprovisioned_profile / missing_instance, step 1: a new pending creation row, and the
# NOTIFY the signup trigger would have sent. Nothing when the user already has a row.
REQUEUE_CREATION_INSERT: Final = f"""
WITH queued AS (
    INSERT INTO public.evolution_instance_creation_queue (user_id)
    VALUES (%(user_id)s)
    ON CONFLICT (user_id) DO NOTHING
    RETURNING id, user_id
)
SELECT id, pg_catalog.pg_notify('{CHANNEL}',
               json_build_object('id', id, 'user_id', user_id)::text) AS notified
FROM queued
"""
# Step 2 for an existing finished row: the seed's manual retry, so the queue trigger makes it
# due and notifies. A pending or processing row is already on its way: left alone.
REQUEUE_CREATION_RETRY: Final = RETRY_USER

# The repair of a missing instance is remembered: a second one for the same user means the
# server deletes instances by itself (DEL_INSTANCE), which must be said, not hidden.
RECORD_MISSING_REPAIR: Final = """
INSERT INTO public.evolution_instance_repairs AS r (user_id, instance_name, missing_count)
VALUES (%(user_id)s, %(instance_name)s, 1)
ON CONFLICT (user_id) DO UPDATE
SET missing_count = r.missing_count + 1,
    instance_name = EXCLUDED.instance_name,
    last_missing_at = now()
RETURNING missing_count
"""

# instance_id_mismatch: record the server's instance (its id and token) as the truth.
RECORD_SERVER_INSTANCE: Final = """
INSERT INTO public.evolution_instances AS i
    (user_id, instance_name, instance_id, integration, webhook_url, webhook_events,
     instance_token)
VALUES (%(user_id)s, %(instance_name)s, %(instance_id)s, %(integration)s, %(webhook_url)s,
        %(webhook_events)s, %(instance_token)s)
ON CONFLICT (user_id) DO UPDATE
SET instance_name = EXCLUDED.instance_name,
    instance_id = EXCLUDED.instance_id,
    integration = COALESCE(EXCLUDED.integration, i.integration),
    instance_token = EXCLUDED.instance_token,
    updated_at = now()
"""

# webhook_drift, after the webhook was set again at the server: record what is configured.
RECORD_WEBHOOK: Final = """
UPDATE public.evolution_instances
SET webhook_url = %(webhook_url)s, webhook_events = %(webhook_events)s, updated_at = now()
WHERE user_id = %(user_id)s
"""

# orphan_row: deprovision through the same SQL function the deletion trigger uses (a
# finished row is re-armed, a pending or in-flight one left; NOTIFY at commit). NULL: left.
QUEUE_DELETION: Final = """
SELECT public.evolution_queue_instance_deletion(%(user_id)s, %(instance_name)s) AS queued_id
"""

# `stats`: deletions shown apart from the seed's creation figures.
DELETION_STATS_BY_STATUS: Final = """
SELECT status, COUNT(*) AS count, AVG(retry_count)::float8 AS avg_retries
FROM public.evolution_instance_deletion_queue
GROUP BY status
ORDER BY status
"""

# The four reads of the desired state see one snapshot (first statement of the transaction).
RECONCILE_SNAPSHOT: Final = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
