"""The peer: pgqueuer (on asyncpg) running the same job as evolution-listener, for `make bench`.

What it does per queued user, like the service: POST /instance/create (with the webhook),
POST /webhook/set/{name}, then one statement that records the instance in
`evolution_instances` and marks the user's `evolution_instance_creation_queue` row
`completed` (the bench reads latency and throughput from that row, for both systems alike).

How the job reaches pgqueuer: its own queue table, installed with its own installer
(`Queries.install()`), fed by a trigger on the creation queue (AFTER INSERT: one pgqueuer
job and its `queued` log row, as pgqueuer's `enqueue` writes them), so a signup is the same
single INSERT into `profiles` for both systems and the peer's enqueue is in the signup's
transaction, as the product's is.

Why it is fair (and lean, as a pgqueuer user would write it):
- plain aiohttp, one `ClientSession` (keep-alive, no connection bound): no typed errors, no
  redaction, no bounded body reads, no metrics; the service's own client does all of these,
  so the peer's per-call cost is the lower bound of what such a job costs;
- the record is ONE autocommit statement per job (one round trip), not BEGIN/INSERT/UPDATE/
  COMMIT;
- uvloop (pgqueuer's own CLI runs on it; the service does too);
- pgqueuer's defaults otherwise, `max_concurrent_tasks` = the concurrency (16) and the
  largest batch that allows (concurrency / 2, pgqueuer requires twice the batch).
It logs in as the bootstrap superuser (the service uses its least-privilege role): that
costs the peer nothing.

Run as a process by the bench: `python bench/peer_pgqueuer.py --dsn ... --base-url ...`,
the API key in $PEER_EVOLUTION_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too

ENTRYPOINT = "provision_instance"
API_KEY_ENV = "PEER_EVOLUTION_API_KEY"  # in the environment, not argv (ps shows argv)
INTEGRATION = "WHATSAPP-BAILEYS"
PREFIX = "evo-"

# Per inserted creation-queue row: one pgqueuer job (payload = the user id) and its
# `queued` log row, the two rows pgqueuer's own enqueue statement writes.
PEER_TRIGGER_SQL = f"""
CREATE OR REPLACE FUNCTION public.bench_enqueue_pgqueuer_job() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    job_id bigint;
BEGIN
    INSERT INTO public.pgqueuer (priority, entrypoint, payload, execute_after, status)
    VALUES (0, '{ENTRYPOINT}', convert_to(NEW.user_id::text, 'UTF8'), now(), 'queued')
    RETURNING id INTO job_id;
    INSERT INTO public.pgqueuer_log (job_id, status, entrypoint, priority)
    VALUES (job_id, 'queued', '{ENTRYPOINT}', 0);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_enqueue_pgqueuer_job
AFTER INSERT ON public.evolution_instance_creation_queue
FOR EACH ROW EXECUTE FUNCTION public.bench_enqueue_pgqueuer_job();
"""

# One round trip: complete the queue row, record the instance (as the service's
# COMPLETE_MANY does for a batch).
RECORD_SQL = """
WITH done AS (
    UPDATE public.evolution_instance_creation_queue
    SET status = 'completed', processed_at = now(), updated_at = now()
    WHERE user_id = $1 AND status IN ('pending', 'processing')
    RETURNING user_id
)
INSERT INTO public.evolution_instances AS i
    (user_id, instance_name, instance_id, integration, webhook_url, webhook_events,
     instance_token)
SELECT user_id, $2, $3, $4, $5, $6, $7 FROM done
ON CONFLICT (user_id) DO UPDATE
SET instance_name = EXCLUDED.instance_name, instance_id = EXCLUDED.instance_id,
    instance_token = EXCLUDED.instance_token, updated_at = now()
"""


def install(admin_dsn: str) -> None:
    """pgqueuer's schema by its own installer, and the trigger that feeds it."""
    import asyncpg
    from pgqueuer import Queries

    async def run() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await Queries.from_asyncpg_connection(conn).install()
            await conn.execute(PEER_TRIGGER_SQL)
        finally:
            await conn.close()

    asyncio.run(run())


def _webhook(webhook_url: str, events: list[str]) -> dict[str, Any]:
    return {"enabled": True, "url": webhook_url, "events": events, "byEvents": False,
            "base64": False}


async def serve(args: argparse.Namespace) -> None:
    import aiohttp
    import asyncpg
    from pgqueuer import Job, Queries, QueueManager

    from listener.config import WEBHOOK_EVENTS, WEBHOOK_HANDLER_PATH

    webhook_url = f"{args.supabase_url}{WEBHOOK_HANDLER_PATH}"
    events = list(WEBHOOK_EVENTS)
    webhook = _webhook(webhook_url, events)
    headers = {"apikey": os.environ[API_KEY_ENV]}
    base = args.base_url.rstrip("/")

    listen_conn = await asyncpg.connect(args.dsn)
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=args.concurrency)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=10))
    qm = QueueManager(Queries.from_asyncpg_connection(listen_conn))

    @qm.entrypoint(ENTRYPOINT)
    async def provision(job: Job) -> None:
        assert job.payload is not None
        user_id = uuid.UUID(job.payload.decode())
        name = f"{PREFIX}{user_id}"
        create = {"instanceName": name, "integration": INTEGRATION, "qrcode": False,
                  "webhook": webhook}
        async with session.post(f"{base}/instance/create", json=create,
                                headers=headers) as resp:
            if resp.status != 201:
                raise RuntimeError(f"create: HTTP {resp.status}")
            created = await resp.json()
        async with session.post(f"{base}/webhook/set/{name}", json={"webhook": webhook},
                                headers=headers) as resp:
            if resp.status not in (200, 201):
                raise RuntimeError(f"webhook set: HTTP {resp.status}")
            await resp.read()
        await pool.execute(RECORD_SQL, user_id, name, created["instance"]["instanceId"],
                           INTEGRATION, webhook_url, events, created["hash"])

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    try:
        await qm.run(batch_size=max(1, args.concurrency // 2),
                     max_concurrent_tasks=args.concurrency)
    finally:
        await session.close()
        await pool.close()
        await listen_conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/peer_pgqueuer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--supabase-url", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
