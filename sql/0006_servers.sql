-- evolution-listener 0006: many Evolution API servers (SPEC §10).
--
-- Expand only: the previous release keeps working while this is applied. Its inserts into
-- evolution_instances name no server and land on `default`, the name of the single server
-- of EVOLUTION_API_BASE_URL; its claims ignore the queue's new column.

-- The server an instance lives on. Existing rows were created on the one server there was.
ALTER TABLE public.evolution_instances
    ADD COLUMN IF NOT EXISTS server text NOT NULL DEFAULT 'default';

-- The server a creation entry was placed on, written once, before the first create call,
-- so a retry, a reclaim or another replica calls the same server (a lost create response
-- must never yield a second instance elsewhere). NULL until placed.
ALTER TABLE public.evolution_instance_creation_queue
    ADD COLUMN IF NOT EXISTS server text;

-- The deletion queue (0005) records the server of the instance it deletes. Guarded so this
-- file also applies where 0005 is absent (a database migrated from a branch without it).
DO $$
BEGIN
    IF pg_catalog.to_regclass('public.evolution_instance_deletion_queue') IS NOT NULL THEN
        ALTER TABLE public.evolution_instance_deletion_queue
            ADD COLUMN IF NOT EXISTS server text;
    END IF;
END
$$;

-- Placement counts, per server, the instances recorded there plus the entries placed there
-- and not finished: the first through this index (index-only), the second through a partial
-- index that holds only work in flight, whatever the number of finished rows.
CREATE INDEX IF NOT EXISTS evolution_instances_server_idx
    ON public.evolution_instances (server);
CREATE INDEX IF NOT EXISTS evolution_instance_creation_queue_server_idx
    ON public.evolution_instance_creation_queue (server)
    WHERE server IS NOT NULL AND status IN ('pending', 'processing');

-- Grants: evolution_listener holds table-level SELECT/INSERT/UPDATE on both tables (0002),
-- which covers the new columns. `authenticated` keeps its column list of 0002: the server
-- an instance lives on is the operator's business, not the user's.
