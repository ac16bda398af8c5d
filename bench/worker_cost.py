"""The worker machinery's own CPU per entry, alone: no PostgreSQL, no HTTP.

Runs the service's `ClaimLoop` (claim, dispatch, one attempt, the batched completion,
metrics, log lines) over the in-memory store with a job whose steps report like
provisioning does (created, webhook) and whose completion goes through the real
`CompletionBatcher`, at the given log level with the service's JSON formatter into memory.
What is left is what the service spends per entry beyond its I/O: compare two commits
(checkout one, run, checkout the other, run; interleave a few times) in CPU time, which
other users of a shared machine move much less than wall time.

    .venv/bin/python bench/worker_cost.py --level INFO --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/...`

from listener.core.attempt import AttemptConfig
from listener.core.batcher import CompletionBatcher
from listener.core.jobs import JobKind, StepReporter
from listener.core.loop import ClaimLoop, LoopConfig
from listener.core.memory_store import MemoryStore
from listener.db.store import ClaimedEntry
from listener.ops.logging import configure_logging
from listener.ops.metrics import Metrics, WorkMetrics
from listener.policy import RetryPolicy

WEBHOOK_URL = "https://bench-project.supabase.co/functions/v1/evolution-webhook"


class _QueueStore(MemoryStore):
    """The in-memory store with an O(1) claim (its own scans every row: fine for tests, but
    here it would be the cost measured). Every row is due and succeeds: no retries."""

    def __init__(self, entries: int) -> None:
        super().__init__("bench", lease_s=60)
        for _ in range(entries):
            self.add(uuid.uuid4())
        self._due = collections.deque(self.rows.values())

    async def claim(self, limit: int) -> tuple[list[ClaimedEntry], float | None]:
        self.claims += 1
        entries = []
        while self._due and len(entries) < limit:
            row = self._due.popleft()
            row.status = "processing"
            row.claim_seq += 1
            row.lease_owner = self.owner
            entries.append(ClaimedEntry(id=row.id, user_id=row.user_id, retry_count=0,
                                        claim_seq=row.claim_seq, reclaim_count=0,
                                        reclaimed=False, created_at=row.created_at))
        return entries, (60.0 if entries or self._due else None)


class _Job:
    """Provisioning's shape without HTTP: two reported steps, a batched completion."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.batcher: CompletionBatcher[str] = CompletionBatcher(self._write)

    async def _write(self, done: list[tuple[ClaimedEntry, str]]) -> dict[tuple[int, int], float]:
        latencies = {}
        for entry, _ in done:
            if await self.store.complete(entry):
                latencies[(entry.id, entry.claim_seq)] = 0.001
        return latencies

    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> str:
        name = f"evo-{entry.user_id}"
        await asyncio.sleep(0)  # the create call
        report("created", {"instance": name, "instance_id": str(entry.user_id)})
        await asyncio.sleep(0)  # the webhook call
        report("webhook", {"instance": name, "url": WEBHOOK_URL, "events": 3})
        return name

    async def complete(self, entry: ClaimedEntry, result: str) -> float | None:
        return await self.batcher.complete(entry, result)

    def describe(self, result: str) -> dict[str, object]:
        return {"instance": result, "adopted": False}


async def _round(entries: int, concurrency: int) -> float:
    """CPU µs per entry of one drain of `entries` rows."""
    store = _QueueStore(entries)
    job = _Job(store)
    kind = JobKind(name="creation", action="provisioning", store=store, handler=job)

    async def healthy() -> tuple[bool, str]:
        return True, "ok"

    loop = ClaimLoop(
        LoopConfig(concurrency=concurrency, sweep_interval_s=5.0, shutdown_grace_s=1.0),
        [kind],
        AttemptConfig(lease_s=60, max_reclaims=3, retry=RetryPolicy(max_retries=3, base_ms=800)),
        probe_for=lambda server: healthy,
        observer=WorkMetrics(Metrics()),
    )
    started = time.process_time()
    counts = await loop.drain()
    spent = time.process_time() - started
    if counts.completed != entries:
        raise RuntimeError(f"completed {counts.completed} of {entries}")
    return spent / entries * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/worker_cost.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--level", default="INFO")
    args = parser.parse_args(argv)
    sink = io.StringIO()
    configure_logging("json", args.level, ["bench-sim-key"], stream=sink)
    figures = []
    for _ in range(args.rounds):
        figures.append(asyncio.run(_round(args.entries, args.concurrency)))
        sink.seek(0)
        sink.truncate()
    logging.getLogger().handlers.clear()
    print(f"worker machinery at {args.level}, concurrency {args.concurrency}: "
          f"{statistics.median(figures):.1f} us CPU per entry (median of {args.rounds}; "
          f"rounds {', '.join(f'{f:.1f}' for f in figures)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
