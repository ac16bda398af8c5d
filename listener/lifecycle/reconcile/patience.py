"""Calls to the Evolution API during a reconcile: 429 and outages honoured, within a bound.

One `Patience` is shared by every call of a run, so a 429 pauses all of them for its
Retry-After (not only the call that got it), and an outage is waited out with capped
backoff (at most 5 s apart, as the service's probe does) instead of failing the whole run
at the first refused connection. Bounded in time and attempts: a server down for good
ends the run with its error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from listener.evolution.errors import RateLimitedError, TransientError

T = TypeVar("T")

MAX_BACKOFF_S = 5.0
DEFAULT_RETRY_AFTER_S = 1.0


class Patience:
    def __init__(
        self,
        *,
        max_wait_s: float = 120.0,
        max_attempts: int = 30,
        max_retry_after_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wait_s = max_wait_s
        self.max_attempts = max_attempts
        self.max_retry_after_s = max_retry_after_s
        self._sleep = sleep
        self._clock = clock
        self._paused_until = 0.0
        self.waits = 0  # how many times a call waited (429 or outage), for reports and tests

    def _pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """`await request()`, retried through 429s and transient failures, within the bound."""
        deadline = self._clock() + self.max_wait_s
        backoff = 0.2
        for attempt in range(1, self.max_attempts + 1):
            wait = self._paused_until - self._clock()
            if wait > 0:
                await self._sleep(wait)
            try:
                return await request()
            except RateLimitedError as error:
                pause = min(error.retry_after_s or DEFAULT_RETRY_AFTER_S, self.max_retry_after_s)
                if attempt == self.max_attempts or self._clock() + pause > deadline:
                    raise
                self._pause(pause)
            except TransientError:
                if attempt == self.max_attempts or self._clock() + backoff > deadline:
                    raise
                self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.waits += 1
        raise AssertionError("unreachable: the last attempt returns or raises")
