"""Completions written in batches: under load, everything that finished while the last
batch was being written goes out in the next statement; at low load a batch is one entry
and waits for nothing (one scheduler turn). Moved out of the store: batching is the
machinery's choice, the statement that writes a batch is the kind's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import psycopg

from listener.db.store import ClaimedEntry

R = TypeVar("R")

# Writes a batch; answers {(entry id, claim_seq): seconds since insert} for the claims
# whose lease held.
BatchWriter = Callable[[list[tuple[ClaimedEntry, R]]], Awaitable[dict[tuple[int, int], float]]]


class CompletionBatcher(Generic[R]):
    def __init__(self, write: BatchWriter[R], max_batch: int = 64) -> None:
        self._write_batch = write
        self.max_batch = max_batch
        self._waiting: list[tuple[ClaimedEntry, R, asyncio.Future[float | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def complete(self, entry: ClaimedEntry, record: R) -> float | None:
        """Seconds since the entry's insert, or None when its lease was lost."""
        future: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, record, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # let entries finishing in this same turn join the batch
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            await self._write(batch)

    async def _write(
        self, batch: list[tuple[ClaimedEntry, R, asyncio.Future[float | None]]]
    ) -> None:
        try:
            latencies = await self._write_batch([(entry, record) for entry, record, _ in batch])
        except BaseException as error:
            if len(batch) > 1 and isinstance(error, psycopg.Error) \
                    and not isinstance(error, psycopg.OperationalError):
                # One row's data error must not fail its neighbours: write them one by one.
                for item in batch:
                    await self._write([item])
                return
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for entry, _, future in batch:
            if not future.done():
                future.set_result(latencies.get((entry.id, entry.claim_seq)))
