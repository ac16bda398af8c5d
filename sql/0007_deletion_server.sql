-- evolution-listener 0007: a queued deletion records the server its instance lives on
-- (SPEC §9, §10), so the deletion job calls that server's Evolution API.
--
-- The queuing function 0005 defined (used by the deletion trigger and by reconcile's repair
-- of an orphan row) is replaced with the same signature: the previous release's code and
-- trigger keep calling it unchanged (expand only). The server is the instance row's, else
-- the creation entry's placement (0006); the trigger calls this BEFORE it deletes the
-- creation row, so that placement is still there to read. NULL: the single server.
CREATE OR REPLACE FUNCTION public.evolution_queue_instance_deletion(
    p_user_id uuid, p_instance_name text
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    queued_id bigint;
    placed_on text;
BEGIN
    SELECT COALESCE(
        (SELECT i.server FROM public.evolution_instances AS i WHERE i.user_id = p_user_id),
        (SELECT c.server FROM public.evolution_instance_creation_queue AS c
         WHERE c.user_id = p_user_id))
    INTO placed_on;

    INSERT INTO public.evolution_instance_deletion_queue AS q (user_id, instance_name, server)
    VALUES (p_user_id, p_instance_name, placed_on)
    ON CONFLICT (user_id) DO UPDATE
    SET status = 'pending',
        instance_name = COALESCE(EXCLUDED.instance_name, q.instance_name),
        server = COALESCE(EXCLUDED.server, q.server),
        retry_count = 0,
        error_message = NULL,
        next_attempt_at = pg_catalog.now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        reclaim_count = 0,
        processed_at = NULL,
        created_at = pg_catalog.now(),
        updated_at = pg_catalog.now()
    WHERE q.status IN ('completed', 'failed')
    RETURNING q.id INTO queued_id;

    IF queued_id IS NOT NULL THEN
        -- Delivered only when the transaction commits; never on rollback.
        PERFORM pg_catalog.pg_notify(
            'evolution_instance_deletion_queue',
            pg_catalog.json_build_object('id', queued_id, 'user_id', p_user_id)::text
        );
    END IF;
    RETURN queued_id;
END
$$;

REVOKE ALL ON FUNCTION public.evolution_queue_instance_deletion(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.evolution_queue_instance_deletion(uuid, text)
    TO evolution_listener;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON FUNCTION public.evolution_queue_instance_deletion(uuid, text) FROM anon;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON FUNCTION public.evolution_queue_instance_deletion(uuid, text)
            FROM authenticated;
    END IF;
END
$$;
