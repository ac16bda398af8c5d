"""Back-off per server in the core (SPEC §10): one server's outage pauses only its work, the
service is 'backing off' only when every server is; a placement wait spends no retry and
touches no breaker."""

from __future__ import annotations

import time

import pytest

from listener.core.breaker import Breakers
from listener.core.observer import NullObserver
from listener.policy import (
    FLEET_WAIT_S,
    FailureKind,
    RetryPolicy,
    ServerWait,
    UnknownServerError,
    Verdict,
    classify,
    decide,
)

pytestmark = pytest.mark.unit


async def _never_healthy() -> tuple[bool, str]:
    return False, "refused"


def _breakers() -> Breakers:
    return Breakers(lambda server: _never_healthy, NullObserver(), on_recovered=lambda: None,
                    servers=("a", "b"))


async def test_one_server_open_pauses_only_its_work() -> None:
    breakers = _breakers()
    now = time.monotonic()
    await breakers.get("a").record_failure(FailureKind.AUTH, 1, "401", None)
    try:
        assert breakers.paused(now) == {"a"}
        assert breakers.blocked_s(now) == 0  # b can still take work: claiming goes on
        assert breakers.open_reason() is None  # not "the service backs off"
        assert set(breakers.open_reasons()) == {"a"}
        await breakers.get("b").record_failure(FailureKind.AUTH, 2, "401", None)
        assert breakers.blocked_s(now) == float("inf")
        reason = breakers.open_reason()
        assert reason is not None and reason.startswith("a: ") and "; b: " in reason
    finally:
        breakers.cancel()


async def test_a_rate_pause_on_one_server_is_a_pause_of_that_server_only() -> None:
    breakers = _breakers()
    now = time.monotonic()
    await breakers.get("b").record_failure(FailureKind.RATE_LIMITED, 1, "429", 2.0)
    assert breakers.paused(now) == {"b"}
    assert 0 < breakers.resume_in_s(now) <= 2.01
    assert breakers.blocked_s(now) == 0


def test_a_placement_wait_is_released_without_spending_a_retry() -> None:
    wait = ServerWait("every active Evolution API server is full (a 80/80)")
    kind = classify(wait)
    assert kind is FailureKind.NO_SERVER
    decision = decide(kind, retry_count=0, policy=RetryPolicy(), outage_open=False,
                      message=str(wait))
    assert decision.verdict is Verdict.RELEASE and decision.retry_count == 0
    assert decision.delay_s == FLEET_WAIT_S
    short = decide(kind, retry_count=2, policy=RetryPolicy(), outage_open=False,
                   message="db", retry_after_s=1.0)
    assert short.retry_count == 2 and short.delay_s == 1.0


def test_an_entry_on_a_server_no_longer_configured_fails_naming_it() -> None:
    error = UnknownServerError("evo-old")
    assert classify(error) is FailureKind.PERMANENT
    assert "evo-old" in str(error) and "EVOLUTION_API_SERVERS" in str(error)
