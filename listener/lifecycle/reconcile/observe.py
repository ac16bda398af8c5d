"""The observed state: what the Evolution server has.

`fetchInstances` once (it has no pagination and answers every instance with its token),
then `find_webhook` for the instances whose webhook the diff compares, at most
`concurrency` in flight (a fixed set of workers pulling names, so 10,000 instances are not
10,000 tasks). Tokens stay inside `InstanceInfo`, whose repr hides them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from listener.evolution.client import EvolutionClient
from listener.evolution.errors import NotFoundError
from listener.evolution.models import InstanceInfo, WebhookState
from listener.lifecycle.reconcile.patience import Patience

# (phase, done, total): a terminal progress line for large fleets.
Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


class ObservedStateReader:
    def __init__(
        self,
        client: EvolutionClient,
        *,
        prefix: str,
        concurrency: int,
        patience: Patience,
        progress: Progress = _no_progress,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.concurrency = max(1, concurrency)
        self.patience = patience
        self.progress = progress

    async def instances(self) -> dict[str, InstanceInfo]:
        """The server's instances whose name has our prefix, by name."""
        rows = await self.patience.call(self.client.fetch_instances)
        return {row.instance_name: row for row in rows
                if row.instance_name.startswith(self.prefix)}

    async def webhooks(self, names: Sequence[str]) -> dict[str, WebhookState | None]:
        """The stored webhook of each name (None: never set). A name the server no longer
        knows (deleted meanwhile) is left out: the next run sees it missing."""
        found: dict[str, WebhookState | None] = {}
        queue = iter(names)
        total = len(names)
        done = 0

        async def worker() -> None:
            nonlocal done
            for name in queue:  # one shared iterator: each name is taken once
                with contextlib.suppress(NotFoundError):
                    found[name] = await self.patience.call(
                        lambda name=name: self.client.find_webhook(name)  # type: ignore[misc]
                    )
                done += 1
                self.progress("webhooks", done, total)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, total))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
        return found
