-- evolution-listener 0003: the queue's NOTIFY payload is built in one place.
--
-- Before this, four places built `{"id": ..., "user_id": ...}` by hand (the signup trigger,
-- the manual-retry trigger, and the service's retry and release statements); a change to
-- the payload (a second queue, a new field) would have had to find all four. Now each calls
-- this function. 0001 is not edited (its checksum is recorded): its two trigger functions
-- are replaced here with bodies that differ only in that call.

-- SECURITY INVOKER: it does nothing its caller could not do with pg_notify directly, so it
-- must not run with more rights than the caller. search_path is empty: every name is
-- qualified, and a caller's search_path cannot redirect it.
CREATE OR REPLACE FUNCTION public.evolution_listener_notify(channel text, id bigint, user_id uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY INVOKER
SET search_path = ''
AS $$
BEGIN
    -- Delivered only when the caller's transaction commits; never on rollback.
    PERFORM pg_catalog.pg_notify(
        channel,
        pg_catalog.json_build_object('id', id, 'user_id', user_id)::text
    );
END
$$;

-- Who may call it: the service (its retry and release statements), and whoever may update
-- the queue and so fire the manual-retry trigger (service_role on Supabase: the seed's
-- manual retry from the dashboard). Not anon or authenticated: through PostgREST's RPC they
-- could otherwise wake every replica at will. The signup trigger runs as its owner.
REVOKE ALL ON FUNCTION public.evolution_listener_notify(text, bigint, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.evolution_listener_notify(text, bigint, uuid)
    TO evolution_listener;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON FUNCTION public.evolution_listener_notify(text, bigint, uuid) FROM anon;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON FUNCTION public.evolution_listener_notify(text, bigint, uuid)
            FROM authenticated;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION public.evolution_listener_notify(text, bigint, uuid)
            TO service_role;
    END IF;
END
$$;

-- 0001's signup trigger function, unchanged but for the call (still SECURITY DEFINER: the
-- inserting role must not be granted anything on the queue).
CREATE OR REPLACE FUNCTION public.handle_profile_evolution_instance()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    queued_id bigint;
BEGIN
    INSERT INTO public.evolution_instance_creation_queue (user_id)
    VALUES (NEW.id)
    ON CONFLICT (user_id) DO NOTHING
    RETURNING id INTO queued_id;

    IF queued_id IS NOT NULL THEN
        PERFORM public.evolution_listener_notify(
            'evolution_instance_creation_queue', queued_id, NEW.id
        );
    END IF;
    RETURN NEW;
END
$$;

-- 0001's manual-retry trigger function, unchanged but for the call.
CREATE OR REPLACE FUNCTION public.evolution_queue_on_manual_retry()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    NEW.next_attempt_at := pg_catalog.now();
    NEW.lease_owner := NULL;
    NEW.lease_expires_at := NULL;
    NEW.reclaim_count := 0;
    NEW.processed_at := NULL;
    PERFORM public.evolution_listener_notify(
        'evolution_instance_creation_queue', NEW.id, NEW.user_id
    );
    RETURN NEW;
END
$$;
