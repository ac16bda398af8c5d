"""CPU per entry of the parts of the service outside the worker loop, in isolation.

The drain's service CPU per entry mixes the worker loop, psycopg, the Evolution client and
the log lines. This measures two of them alone, in this process, so a change to one of them
shows in a figure that the rest of the machine moves little (CPU time, not wall time):
- `client`: one provisioning's HTTP work (create with the webhook + webhook set, the
  answers parsed and checked) through the service's `Provisioner` and `EvolutionClient`,
  concurrency 64, against the simulator in its own process; the client's metrics observer
  as the service wires it;
- `plain`: the same two calls as the peer (bench/peer_pgqueuer.py) makes them, plain aiohttp;
- `logging`: the four INFO lines the worker writes per completed entry, through the
  service's JSON handler (redaction filter + formatter) into a discarded stream.

`python bench/client_cost.py [--entries N] [--rounds R]`: prints µs of CPU per entry, the
median of R rounds. Use it A/B (old code on PYTHONPATH vs new); the machine is shared, so
compare medians of interleaved rounds, not single figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/...`

from bench.harness import SimulatorProcess
from listener.config import WEBHOOK_EVENTS
from listener.evolution.client import EvolutionClient
from listener.evolution.models import WebhookSpec
from listener.lifecycle.provision import Provisioner
from listener.ops.logging import configure_logging
from listener.ops.metrics import Metrics

CONCURRENCY = 64
WEBHOOK_URL = "https://bench-project.supabase.co/functions/v1/evolution-webhook-handler"


def _client(sim: SimulatorProcess, metrics: Metrics) -> EvolutionClient:
    """The client as service.make_client wires it (observer feeding the metrics)."""
    durations, errors = metrics.evolution_request_duration, metrics.evolution_errors

    def observer(operation: str, duration_s: float, failure: str | None) -> None:
        durations.labels(operation=operation, server="default").observe(duration_s)
        if failure is not None:
            errors.labels(operation=operation, status=failure, server="default").inc()

    return EvolutionClient(sim.base_url, sim.api_key, max_connections=CONCURRENCY * 2,
                           observer=observer)


async def _client_round(sim: SimulatorProcess, entries: int) -> float:
    """CPU µs per provisioning (this process only)."""
    metrics = Metrics()
    webhook = WebhookSpec(url=WEBHOOK_URL, events=WEBHOOK_EVENTS,
                          headers={"Authorization": "Bearer bench-webhook-secret"})
    async with _client(sim, metrics) as client:
        provisioner = Provisioner(client, webhook, integration="WHATSAPP-BAILEYS",
                                  prefix="evo-")
        users = [uuid.uuid4() for _ in range(entries)]
        await asyncio.gather(*(provisioner.provision(u) for u in users[:CONCURRENCY]))
        queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        for user in users[CONCURRENCY:]:
            queue.put_nowait(user)

        async def lane() -> None:
            while not queue.empty():
                await provisioner.provision(queue.get_nowait())

        started = time.process_time()
        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
        spent = time.process_time() - started
    return spent / (entries - CONCURRENCY) * 1e6


async def _plain_round(sim: SimulatorProcess, entries: int) -> float:
    """CPU µs per provisioning of the peer's plain aiohttp job (bench/peer_pgqueuer.py): the
    floor the service's client is compared with."""
    import aiohttp

    webhook = {"enabled": True, "url": WEBHOOK_URL, "events": list(WEBHOOK_EVENTS),
               "byEvents": False, "base64": False}
    headers = {"apikey": sim.api_key}
    base = sim.base_url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def provision(user: uuid.UUID) -> None:
            name = f"evo-{user}"
            create = {"instanceName": name, "integration": "WHATSAPP-BAILEYS",
                      "qrcode": False, "webhook": webhook}
            async with session.post(f"{base}/instance/create", json=create,
                                    headers=headers) as resp:
                assert resp.status == 201
                await resp.json()
            async with session.post(f"{base}/webhook/set/{name}", json={"webhook": webhook},
                                    headers=headers) as resp:
                assert resp.status in (200, 201)
                await resp.read()

        users = [uuid.uuid4() for _ in range(entries)]
        await asyncio.gather(*(provision(u) for u in users[:CONCURRENCY]))
        queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        for user in users[CONCURRENCY:]:
            queue.put_nowait(user)

        async def lane() -> None:
            while not queue.empty():
                await provision(queue.get_nowait())

        started = time.process_time()
        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
        spent = time.process_time() - started
    return spent / (entries - CONCURRENCY) * 1e6


def _logging_round(entries: int) -> float:
    """CPU µs for the worker's four INFO lines of one entry (JSON, redaction on)."""
    sink = io.StringIO()
    configure_logging("json", "INFO", ["bench-sim-key", "bench-webhook-secret"], stream=sink)
    log = logging.getLogger("listener.worker")
    started = time.process_time()
    for index in range(entries):
        user = uuid.uuid4()
        name = f"evo-{user}"
        fields = {"user_id": str(user), "attempt": 1, "queue_id": index}
        log.info("provisioning", extra=fields)
        log.info("created", extra={**fields, "instance": name, "instance_id": str(user)})
        log.info("webhook", extra={**fields, "instance": name, "url": WEBHOOK_URL,
                                   "events": len(WEBHOOK_EVENTS)})
        log.info("completed", extra={**fields, "instance": name, "adopted": False,
                                     "duration_ms": 3.1, "latency_ms": 4.2})
        if index % 500 == 0:
            sink.seek(0)
            sink.truncate()
    spent = time.process_time() - started
    logging.getLogger().handlers.clear()
    return spent / entries * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/client_cost.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import uvloop

    client_us: list[float] = []
    plain_us: list[float] = []
    log_us: list[float] = []
    with SimulatorProcess() as sim:
        for _ in range(max(1, args.rounds)):
            client_us.append(uvloop.run(_client_round(sim, args.entries)))
            plain_us.append(uvloop.run(_plain_round(sim, args.entries)))
            log_us.append(_logging_round(args.entries))
    print(f"client : {statistics.median(client_us):7.1f} us CPU per provisioning "
          f"(rounds: {', '.join(f'{v:.0f}' for v in client_us)})")
    print(f"plain  : {statistics.median(plain_us):7.1f} us CPU per provisioning, the peer's "
          f"plain aiohttp job (rounds: {', '.join(f'{v:.0f}' for v in plain_us)})")
    print(f"logging: {statistics.median(log_us):7.1f} us CPU per entry, 4 INFO lines "
          f"(rounds: {', '.join(f'{v:.0f}' for v in log_us)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
