"""Completions written in batches: under load, everything that finished while the last
batch was being written goes out in the next statement; at low load a batch is one entry
and waits for nothing (one scheduler turn). Moved out of the store: batching is the
machinery's choice, the statement that writes a batch is the kind's.

While capacity is the limit, a batch may also carry a claim (`Refill`): the slots its
entries free are refilled by the statement that completes them, so a drain spends one
statement per batch instead of a completion and then a claim."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import psycopg

from listener.db.store import ClaimedEntry, CompletedAndClaimed
from listener.text import one_line

log = logging.getLogger("listener.worker")

R = TypeVar("R")

# Writes a batch; answers {(entry id, claim_seq): seconds since insert} for the claims
# whose lease held.
BatchWriter = Callable[[list[tuple[ClaimedEntry, R]]], Awaitable[dict[tuple[int, int], float]]]


@dataclass(frozen=True)
class ClaimAsk:
    """What a batch may claim: up to `limit` entries, none on a `paused` server. The rest
    is the loop's bookkeeping: `slots` it holds for them, `handed` the batch's entries whose
    slots it reuses."""

    limit: int
    paused: Collection[str]
    slots: int
    handed: tuple[ClaimedEntry, ...]


# Writes a batch and claims per the ask, in one statement.
BatchClaimWriter = Callable[[list[tuple[ClaimedEntry, R]], ClaimAsk],
                            Awaitable[CompletedAndClaimed]]


class Refill(Protocol):
    """The loop's side of a claiming batch."""

    def ask(self, batch: Sequence[ClaimedEntry]) -> ClaimAsk | None:
        """How much the batch's statement should claim; None: complete only."""
        ...

    async def take(self, ask: ClaimAsk, claimed: list[ClaimedEntry],
                   next_due_s: float | None) -> None:
        """The statement committed: dispatch (or, when stopping, release) what it claimed."""
        ...

    def cancel(self, ask: ClaimAsk) -> None:
        """The statement failed: nothing was claimed, nothing completed."""
        ...


class CompletionBatcher(Generic[R]):
    def __init__(self, write: BatchWriter[R], max_batch: int = 64,
                 write_and_claim: BatchClaimWriter[R] | None = None) -> None:
        self._write_batch = write
        self._write_and_claim = write_and_claim
        self.max_batch = max_batch
        self.refill: Refill | None = None  # set by the loop when the kind can claim here
        self._waiting: list[tuple[ClaimedEntry, R, asyncio.Future[float | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def can_claim(self) -> bool:
        return self._write_and_claim is not None

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
            await self._write(batch, self._ask(batch))

    def _ask(self, batch: list[tuple[ClaimedEntry, R, asyncio.Future[float | None]]]
             ) -> ClaimAsk | None:
        if self.refill is None or self._write_and_claim is None:
            return None
        try:
            return self.refill.ask([entry for entry, _, _ in batch])
        except Exception as error:  # a bug in the loop's side must not strand completions
            log.error("riding claim not asked", extra={"error": one_line(error)})
            return None

    async def _write(
        self, batch: list[tuple[ClaimedEntry, R, asyncio.Future[float | None]]],
        ask: ClaimAsk | None = None,
    ) -> None:
        items = [(entry, record) for entry, record, _ in batch]
        try:
            if ask is None or self._write_and_claim is None:
                latencies = await self._write_batch(items)
            else:
                result = await self._write_and_claim(items, ask)
                latencies = result.latencies
        except BaseException as error:
            if ask is not None and self.refill is not None:
                self.refill.cancel(ask)
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
        try:
            if ask is not None and self.refill is not None:
                # Before the batch's own tasks resume: a stopping loop releases what was
                # claimed while they still hold the shutdown open.
                await self.refill.take(ask, result.claimed, result.next_due_s)
        except Exception as error:  # the batch is written: its tasks must still resume
            log.error("riding claim not taken; its entries wait for their lease",
                      extra={"error": one_line(error), "claimed": len(result.claimed)})
        finally:
            for entry, _, future in batch:
                if not future.done():
                    future.set_result(latencies.get((entry.id, entry.claim_seq)))
