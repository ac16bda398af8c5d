"""The outage breaker of one Evolution server, and its probe.

When the API is down for everyone (or rejects our key), failing users' entries one by one
would spend their retries on our problem. The pure rules are `policy.OutageDetector` and
`policy.RateLimitPause`; this class adds the I/O around them: a probe shared by tasks that
fail at the same moment, and a probe loop that closes the breaker when the server is back.
`Breakers` holds one per server name (today only "default"), so an attempt consults the
breaker of the server its entry lives on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from listener.core.jobs import DEFAULT_SERVER
from listener.core.observer import WorkObserver
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import EvolutionError
from listener.policy import FailureKind, OutageDetector, RateLimitPause, rate_limit_pause_s
from listener.text import one_line

log = logging.getLogger("listener.worker")

PROBE_TIMEOUT_S = 2.5
PROBE_RESULT_TTL_S = 1.0

Probe = Callable[[], Coroutine[Any, Any, tuple[bool, str]]]


async def probe_evolution(client: EvolutionClient) -> tuple[bool, str]:
    """GET / (is it up?), then a keyed call (is our key accepted?)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await client.server_info()
            await client.check_key()
    except TimeoutError:
        return False, "probe timed out"
    except EvolutionError as error:
        return False, one_line(error)
    return True, "ok"


class Breaker:
    """Open: no claims for this server's work, failed attempts released, not counted."""

    def __init__(self, server: str, probe: Probe, observer: WorkObserver,
                 on_recovered: Callable[[], None]) -> None:
        self.server = server
        self.outage = OutageDetector()
        self.rate_pause = RateLimitPause()
        self._probe = probe
        self._observer = observer
        self._on_recovered = on_recovered
        self._probe_task: asyncio.Task[tuple[bool, str]] | None = None
        self._probe_loop: asyncio.Task[None] | None = None
        self._last_probe: tuple[float, bool, str] | None = None

    @property
    def is_open(self) -> bool:
        return self.outage.is_open

    @property
    def reason(self) -> str | None:
        return self.outage.reason

    def wait_s(self, now: float) -> float:
        """0 when claiming may go on; else how long to wait (an open breaker wakes the loop
        itself when its probe succeeds, so the caller's own interval bounds the wait)."""
        if self.outage.is_open:
            return float("inf")
        return self.rate_pause.remaining_s(now)

    def record_success(self) -> None:
        self.outage.record_success()

    async def record_failure(self, kind: FailureKind, entry_id: int, message: str,
                             retry_after_s: float | None) -> None:
        now = time.monotonic()
        if kind is FailureKind.RATE_LIMITED:
            self.rate_pause.extend(now, rate_limit_pause_s(retry_after_s))
            return
        if kind not in (FailureKind.AUTH, FailureKind.MISCONFIGURED, FailureKind.UNAVAILABLE) \
                or self.outage.is_open:
            return
        opened = self.outage.record_failure(kind, entry_id, now, message)
        if not opened and kind is FailureKind.UNAVAILABLE:
            healthy, reason = await self._probe_once()
            if not healthy:
                self.outage.open(f"Evolution API unavailable: {reason}", time.monotonic())
        if self.outage.is_open:
            self._opened()

    async def _probe_once(self) -> tuple[bool, str]:
        """One probe shared by every task that failed at the same moment."""
        now = time.monotonic()
        if self._last_probe and now - self._last_probe[0] < PROBE_RESULT_TTL_S:
            return self._last_probe[1], self._last_probe[2]
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._probe())
        healthy, reason = await asyncio.shield(self._probe_task)
        self._last_probe = (time.monotonic(), healthy, reason)
        return healthy, reason

    def _opened(self) -> None:
        self._observer.backoff(self.server, True)
        log.error("global back-off: claiming paused, retries not counted",
                  extra={"reason": self.outage.reason, "server": self.server})
        if self._probe_loop is None or self._probe_loop.done():
            self._probe_loop = asyncio.create_task(self._probe_until_recovered())

    async def _probe_until_recovered(self) -> None:
        while self.outage.is_open:
            await asyncio.sleep(self.outage.next_probe_delay_s())
            try:
                healthy, reason = await self._probe()
            except Exception as error:  # keep probing: nothing else would close the back-off
                healthy, reason = False, one_line(error)
            if healthy:
                down_for = time.monotonic() - (self.outage.opened_at or time.monotonic())
                self.outage.close()
                self._last_probe = None
                self._observer.backoff(self.server, False)
                log.info("Evolution API back: resuming",
                         extra={"down_for_s": round(down_for, 1), "server": self.server})
                self._on_recovered()
                return
            log.debug("probe failed", extra={"reason": reason})

    def stop_probing(self) -> None:
        """Stop the recovery loop (shutdown, end of a drain)."""
        if self._probe_loop is not None:
            self._probe_loop.cancel()

    def cancel(self) -> None:
        """Also cancel a shared probe still running (last step of shutdown)."""
        self.stop_probing()
        if self._probe_task is not None and not self._probe_task.done():
            self._probe_task.cancel()


class Breakers:
    """One breaker per Evolution server name, made on first use."""

    def __init__(self, probe_for: Callable[[str], Probe], observer: WorkObserver,
                 on_recovered: Callable[[], None]) -> None:
        self._probe_for = probe_for
        self._observer = observer
        self._on_recovered = on_recovered
        self._by_server: dict[str, Breaker] = {}

    def get(self, server: str = DEFAULT_SERVER) -> Breaker:
        breaker = self._by_server.get(server)
        if breaker is None:
            breaker = Breaker(server, self._probe_for(server), self._observer,
                              self._on_recovered)
            self._by_server[server] = breaker
        return breaker

    def open_reason(self) -> str | None:
        """The reason of the first open breaker (readiness, the drain command)."""
        for breaker in self._by_server.values():
            if breaker.is_open:
                return breaker.reason
        return None

    def stop_probing(self) -> None:
        for breaker in self._by_server.values():
            breaker.stop_probing()

    def cancel(self) -> None:
        for breaker in self._by_server.values():
            breaker.cancel()
