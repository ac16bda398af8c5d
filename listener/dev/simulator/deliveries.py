"""The REMOVE_INSTANCE delivery that holds an asynchronous delete, as v2.3.6 does.

Why: on the real server a delete finishes only after its `REMOVE_INSTANCE` webhook was
delivered; a receiver failing with a retryable error keeps the name in use for the whole
retry schedule (~20 minutes, recorded for u20), and a restart in that window loses the
delete. The simulator delivers only to loopback addresses (tests, demo); a webhook pointing
elsewhere is never contacted and counts as delivered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from listener.dev.simulator.state import SimInstance, SimWebhook, iso_now

__all__ = ["NON_RETRYABLE", "deliver", "is_loopback_url", "retry_delays", "subscribes_remove"]

NON_RETRYABLE = frozenset({400, 401, 403, 404, 422})  # WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES
_MAX_DELAY_S = 300.0
_JITTER = 0.2
_TIMEOUT_S = 30.0


def subscribes_remove(webhook: SimWebhook | None) -> bool:
    """An enabled webhook whose events include REMOVE_INSTANCE (an empty list means all)."""
    if webhook is None or not webhook.enabled or not isinstance(webhook.url, str):
        return False
    events = webhook.events
    return isinstance(events, list) and (not events or "REMOVE_INSTANCE" in events)


def is_loopback_url(url: str) -> bool:
    """http(s) to 127.0.0.0/8, ::1 or localhost: the only targets the simulator contacts."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_delays(initial_s: float, attempts: int, rng: random.Random) -> Iterator[float]:
    """Delays before attempts 2..n: initial·2^(n-1) capped at 300 s, ±20 % jitter, floored
    at the initial delay (v2.3.x webhook.controller.ts)."""
    for n in range(1, attempts):
        base = min(initial_s * 2 ** (n - 1), _MAX_DELAY_S)
        yield max(initial_s, base * (1 + rng.uniform(-_JITTER, _JITTER)))


async def deliver(
    webhook: SimWebhook,
    instance: SimInstance,
    server_url: str,
    *,
    initial_s: float,
    attempts: int,
    rng: random.Random,
) -> str:
    """POST `remove.instance` until delivered, refused for good, or out of attempts.

    Returns how it ended: `delivered`, `rejected` (a non-retryable status) or `gave_up`.
    """
    body: dict[str, Any] = {
        "event": "remove.instance",
        "instance": instance.name,
        "data": None,
        "destination": webhook.url,
        "date_time": iso_now(),
        "server_url": server_url,
        "apikey": None,
    }
    headers = {str(k): str(v) for k, v in (webhook.headers or {}).items()}
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S)
    delays = retry_delays(initial_s, attempts, rng)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(next(delays))
            try:
                async with session.post(str(webhook.url), json=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status < 400:
                        return "delivered"
                    if resp.status in NON_RETRYABLE:
                        return "rejected"
            except (aiohttp.ClientError, TimeoutError):
                pass  # connection refused, reset, timeout: retried
    return "gave_up"
