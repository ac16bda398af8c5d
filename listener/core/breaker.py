"""The outage breaker of one Evolution server, and its probe.

When the API is down for everyone (or rejects our key), failing users' entries one by one
would spend their retries on our problem. The pure rules are `policy.OutageDetector` and
`policy.RateLimitPause`; this class adds the I/O around them: a probe shared by tasks that
fail at the same moment, and a probe loop that closes the breaker when the server is back.
`Breakers` holds one per server name (SPEC §10), so an attempt consults the breaker of the
server its entry is placed on, and an outage on one server pauses only the work placed there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from listener.core.observer import WorkObserver
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import EvolutionError
from listener.fleet.servers import DEFAULT_SERVER
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
    """One breaker per Evolution server name: made eagerly for every configured server (so
    "is every server backing off?" has an answer), lazily for a name met on an entry."""

    def __init__(self, probe_for: Callable[[str], Probe], observer: WorkObserver,
                 on_recovered: Callable[[], None],
                 servers: Sequence[str] = (DEFAULT_SERVER,)) -> None:
        self._probe_for = probe_for
        self._observer = observer
        self._on_recovered = on_recovered
        self._by_server: dict[str, Breaker] = {}
        self.names = tuple(servers) or (DEFAULT_SERVER,)
        for name in self.names:
            self.get(name)

    def get(self, server: str = DEFAULT_SERVER) -> Breaker:
        breaker = self._by_server.get(server)
        if breaker is None:
            breaker = Breaker(server, self._probe_for(server), self._observer,
                              self._on_recovered)
            self._by_server[server] = breaker
        return breaker

    def _configured(self) -> list[Breaker]:
        return [self._by_server[name] for name in self.names]

    def paused(self, now: float) -> frozenset[str]:
        """Servers whose placed work must not be claimed now (backing off or rate-paused)."""
        return frozenset(b.server for b in self._by_server.values() if b.wait_s(now) > 0)

    def blocked_s(self, now: float) -> float:
        """0 while some configured server can take work; else how long all of them hold."""
        return min(b.wait_s(now) for b in self._configured())

    def resume_in_s(self, now: float) -> float:
        """Soonest end of a rate pause (inf: none; an open breaker wakes the loop itself)."""
        waits = (b.wait_s(now) for b in self._by_server.values())
        return min((w for w in waits if w > 0), default=float("inf"))

    def open_reasons(self) -> dict[str, str]:
        """server -> reason of every open breaker (readiness JSON, logs)."""
        return {b.server: b.reason for b in self._by_server.values()
                if b.is_open and b.reason is not None}

    def open_reason(self) -> str | None:
        """Set only when every configured server backs off (the drain command, readiness):
        one server down is not the service down."""
        reasons = self.open_reasons()
        if not all(name in reasons for name in self.names):
            return None
        if len(self.names) == 1:
            return reasons[self.names[0]]
        return "; ".join(f"{name}: {reasons[name]}" for name in self.names)

    def stop_probing(self) -> None:
        for breaker in self._by_server.values():
            breaker.stop_probing()

    def cancel(self) -> None:
        for breaker in self._by_server.values():
            breaker.cancel()
