"""The pure decisions: retry spacing, verdicts per failure kind, the global back-off."""

from __future__ import annotations

import pytest

from listener.evolution.errors import (
    AlreadyExistsError,
    AuthError,
    InvalidResponseError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    ServiceUnavailableError,
    TransientError,
)
from listener.policy import (
    FailureKind,
    OutageDetector,
    RateLimitPause,
    RetryPolicy,
    Verdict,
    classify,
    decide,
    rate_limit_pause_s,
    reclaim_limit_exceeded,
)

pytestmark = pytest.mark.unit

SEED = RetryPolicy(max_retries=3, base_ms=800)


def test_seed_retry_delays() -> None:
    assert [SEED.delay_s(n) for n in (1, 2, 3)] == [0.8, 1.6, 3.2]
    assert RetryPolicy(base_ms=100).delay_s(4) == 0.8
    with pytest.raises(ValueError):
        SEED.delay_s(0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (AuthError("no", operation="create_instance", status=401), FailureKind.AUTH),
        (RateLimitedError("slow", operation="x", retry_after_s=2), FailureKind.RATE_LIMITED),
        (ServiceUnavailableError("down", operation="x", kind="connect"), FailureKind.UNAVAILABLE),
        (ServiceUnavailableError("503", operation="x", kind="http", status=503),
         FailureKind.UNAVAILABLE),
        (TransientError("500", operation="x", status=500), FailureKind.TRANSIENT),
        (InvalidResponseError("garbled", operation="x", status=201), FailureKind.TRANSIENT),
        (PermanentError("bad", operation="x", status=400), FailureKind.PERMANENT),
        (NotFoundError("gone", operation="x", status=404), FailureKind.PERMANENT),
        (AlreadyExistsError("in use", operation="create_instance", status=403),
         FailureKind.PERMANENT),
        (NotFoundError("Cannot POST /instance/create", operation="create_instance",
                       status=404), FailureKind.MISCONFIGURED),
        (TimeoutError(), FailureKind.UNAVAILABLE),
        (ConnectionResetError(), FailureKind.UNAVAILABLE),
        (ValueError("bug"), FailureKind.TRANSIENT),
    ],
)
def test_classify(error: BaseException, kind: FailureKind) -> None:
    assert classify(error) is kind


def _decide(kind: FailureKind, retry_count: int, outage: bool = False,
            retry_after: float | None = None) -> tuple[Verdict, int, float]:
    d = decide(kind, retry_count=retry_count, policy=SEED, outage_open=outage,
               message="m", retry_after_s=retry_after)
    return d.verdict, d.retry_count, d.delay_s


def test_transient_failures_walk_the_seed_policy_then_fail_with_three() -> None:
    assert _decide(FailureKind.TRANSIENT, 0) == (Verdict.RETRY, 1, 0.8)
    assert _decide(FailureKind.TRANSIENT, 1) == (Verdict.RETRY, 2, 1.6)
    assert _decide(FailureKind.TRANSIENT, 2) == (Verdict.RETRY, 3, 3.2)
    assert _decide(FailureKind.TRANSIENT, 3) == (Verdict.FAIL, 3, 0.0)
    assert _decide(FailureKind.UNAVAILABLE, 0) == (Verdict.RETRY, 1, 0.8)


def test_permanent_fails_at_once_without_spending_a_retry() -> None:
    assert _decide(FailureKind.PERMANENT, 0) == (Verdict.FAIL, 0, 0.0)
    assert _decide(FailureKind.PERMANENT, 2, outage=True) == (Verdict.FAIL, 2, 0.0)


def test_service_wide_failures_release_without_spending() -> None:
    assert _decide(FailureKind.AUTH, 1) == (Verdict.RELEASE, 1, 0.0)
    assert _decide(FailureKind.UNAVAILABLE, 2, outage=True) == (Verdict.RELEASE, 2, 0.0)
    assert _decide(FailureKind.TRANSIENT, 3, outage=True) == (Verdict.RELEASE, 3, 0.0)
    assert _decide(FailureKind.RATE_LIMITED, 3, retry_after=7) == (Verdict.RELEASE, 3, 7.0)


def test_rate_limit_pause_bounds() -> None:
    assert rate_limit_pause_s(None) == 1.0
    assert rate_limit_pause_s(-5) == 0.0
    assert rate_limit_pause_s(10_000) == 300.0


def test_zero_retries_policy_fails_first_failure() -> None:
    d = decide(FailureKind.TRANSIENT, retry_count=0, policy=RetryPolicy(max_retries=0),
               outage_open=False, message="x")
    assert d.verdict is Verdict.FAIL


def test_reclaim_limit() -> None:
    assert not reclaim_limit_exceeded(10, 10)
    assert reclaim_limit_exceeded(11, 10)


def test_a_missing_create_route_releases_and_opens_the_back_off() -> None:
    assert _decide(FailureKind.MISCONFIGURED, 0) == (Verdict.RELEASE, 0, 0.0)
    d = OutageDetector()
    assert d.record_failure(FailureKind.MISCONFIGURED, 1, now=0, message="404")
    assert "EVOLUTION_API_BASE_URL" in (d.reason or "")


def test_outage_opens_on_auth_at_once() -> None:
    d = OutageDetector()
    assert d.record_failure(FailureKind.AUTH, 1, now=5.0, message="HTTP 401") is True
    assert d.is_open and d.opened_at == 5.0 and "API key" in (d.reason or "")
    assert d.record_failure(FailureKind.AUTH, 2, now=6.0, message="x") is False


def test_outage_needs_distinct_entries_without_success_between() -> None:
    d = OutageDetector(threshold=3)
    assert not d.record_failure(FailureKind.UNAVAILABLE, 1, 0, "refused")
    assert not d.record_failure(FailureKind.UNAVAILABLE, 1, 0, "refused")  # same entry
    assert not d.record_failure(FailureKind.UNAVAILABLE, 2, 0, "refused")
    d.record_success()
    assert not d.record_failure(FailureKind.UNAVAILABLE, 3, 0, "refused")
    assert not d.record_failure(FailureKind.TRANSIENT, 4, 0, "500")  # a live server answered
    assert not d.record_failure(FailureKind.UNAVAILABLE, 5, 0, "refused")
    assert d.record_failure(FailureKind.UNAVAILABLE, 6, 0, "refused")
    assert d.is_open


def test_probe_spacing_is_capped_and_resets_on_close() -> None:
    d = OutageDetector()
    d.open("down", 0)
    delays = [d.next_probe_delay_s() for _ in range(8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    d.close()
    assert not d.is_open
    d.open("down", 1)
    assert d.next_probe_delay_s() == 0.25


def test_rate_limit_pause_keeps_the_latest_deadline() -> None:
    p = RateLimitPause()
    p.extend(10, 5)
    p.extend(11, 1)
    assert p.remaining_s(12) == 3
    assert p.remaining_s(20) == 0
