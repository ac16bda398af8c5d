-- evolution-listener 0002: least privilege for the service, RLS and grants safe on Supabase.
--
-- Grants are explicit: since 2026 new objects in `public` on Supabase get no automatic grants
-- to anon/authenticated/service_role, while older projects grant them everything by default.
-- Both starting points end in the same state here.

-- The service's role. NOLOGIN: an operator grants it to a login role, e.g.
--   CREATE ROLE evolution_listener_svc LOGIN PASSWORD '...' IN ROLE evolution_listener;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'evolution_listener') THEN
        CREATE ROLE evolution_listener NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON public.evolution_instance_creation_queue FROM PUBLIC;
REVOKE ALL ON public.evolution_instances FROM PUBLIC;

GRANT USAGE ON SCHEMA public TO evolution_listener;
-- INSERT on the queue: `provision USER_ID` enqueues a user the trigger never saw.
-- DELETE on the queue: `cleanup` of old completed entries.
GRANT SELECT, INSERT, UPDATE, DELETE ON public.evolution_instance_creation_queue
    TO evolution_listener;
GRANT SELECT, INSERT, UPDATE ON public.evolution_instances TO evolution_listener;

-- The migration runner's own table exists when `evolution-listener migrate` applies this;
-- not when the file is copied into supabase/migrations/.
DO $$
BEGIN
    IF pg_catalog.to_regclass('public.evolution_listener_migrations') IS NOT NULL THEN
        EXECUTE 'GRANT SELECT ON public.evolution_listener_migrations TO evolution_listener';
    END IF;
END
$$;

-- Row level security on both tables, always: the owner (and the SECURITY DEFINER trigger)
-- bypasses it, every other role sees only what a policy gives it.
ALTER TABLE public.evolution_instance_creation_queue ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.evolution_instances ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS evolution_listener_queue_access ON public.evolution_instance_creation_queue;
CREATE POLICY evolution_listener_queue_access ON public.evolution_instance_creation_queue
    FOR ALL TO evolution_listener USING (true) WITH CHECK (true);

DROP POLICY IF EXISTS evolution_listener_instances_access ON public.evolution_instances;
CREATE POLICY evolution_listener_instances_access ON public.evolution_instances
    FOR ALL TO evolution_listener USING (true) WITH CHECK (true);

-- Supabase roles, where they exist: anon sees nothing; an authenticated user reads its own
-- instance row, never the token column; neither reads the queue; service_role (BYPASSRLS on
-- Supabase) keeps full access, as the dashboard and edge functions expect.
DO $$
DECLARE
    owner_expr text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON public.evolution_instance_creation_queue FROM anon;
        REVOKE ALL ON public.evolution_instances FROM anon;
        REVOKE ALL ON FUNCTION public.handle_profile_evolution_instance() FROM anon;
        REVOKE ALL ON FUNCTION public.evolution_queue_on_manual_retry() FROM anon;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON public.evolution_instance_creation_queue FROM authenticated;
        REVOKE ALL ON public.evolution_instances FROM authenticated;
        REVOKE ALL ON FUNCTION public.handle_profile_evolution_instance() FROM authenticated;
        REVOKE ALL ON FUNCTION public.evolution_queue_on_manual_retry() FROM authenticated;
        GRANT USAGE ON SCHEMA public TO authenticated;
        GRANT SELECT (id, user_id, instance_name, instance_id, integration, webhook_url,
                      webhook_events, created_at, updated_at)
            ON public.evolution_instances TO authenticated;

        IF pg_catalog.to_regprocedure('auth.uid()') IS NOT NULL THEN
            owner_expr := '(SELECT auth.uid())';
        ELSE
            owner_expr := '(SELECT NULLIF(pg_catalog.current_setting('
                          '''request.jwt.claim.sub'', true), '''')::uuid)';
        END IF;
        EXECUTE 'DROP POLICY IF EXISTS evolution_instances_owner_read ON public.evolution_instances';
        EXECUTE pg_catalog.format(
            'CREATE POLICY evolution_instances_owner_read ON public.evolution_instances '
            'FOR SELECT TO authenticated USING (user_id = %s)', owner_expr);
    END IF;

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT ALL ON public.evolution_instance_creation_queue TO service_role;
        GRANT ALL ON public.evolution_instances TO service_role;
    END IF;
END
$$;
