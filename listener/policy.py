"""Pure decisions: what a failure means, when to retry, when the whole service backs off.

No I/O here, and time is passed in, so every rule is unit-tested as a table. The worker asks;
this module answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from listener.evolution.errors import (
    AlreadyExistsError,
    AuthError,
    EvolutionError,
    InvalidResponseError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    ServiceUnavailableError,
    TransientError,
)

RATE_LIMIT_DEFAULT_PAUSE_S = 1.0
RATE_LIMIT_MAX_PAUSE_S = 300.0
OUTAGE_FAILURE_THRESHOLD = 3
PROBE_MIN_DELAY_S = 0.25
PROBE_MAX_DELAY_S = 5.0


class FailureKind(StrEnum):
    """What a failed attempt says about whom: the user's entry, or the service as a whole."""

    AUTH = "auth"  # our API key is rejected: the service's problem
    MISCONFIGURED = "misconfigured"  # the create route itself is missing: wrong base URL
    UNAVAILABLE = "unavailable"  # refused/reset/timeout/502/503/504: maybe down for everyone
    RATE_LIMITED = "rate_limited"  # 429: slow down, not the user's fault
    TRANSIENT = "transient"  # 500, 408, a garbled answer: retry per the user's policy
    PERMANENT = "permanent"  # other 4xx: retrying will not help
    NO_SERVER = "no_server"  # no Evolution server can take a new instance now (SPEC §10)


# How long an entry that found no server to be placed on waits before it is looked at again.
FLEET_WAIT_S = 15.0


class ServerWait(Exception):
    """No Evolution server can take this new instance now (all full, all draining, all with
    room backing off): the entry waits pending, no retry spent. Raised before any HTTP."""

    def __init__(self, message: str, retry_after_s: float = FLEET_WAIT_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownServerError(Exception):
    """The entry is recorded on a server the servers file no longer lists: the operator
    re-adds it (and retries the user); never placed elsewhere (a second instance)."""

    def __init__(self, server: str) -> None:
        super().__init__(f"recorded on server {server}, which EVOLUTION_API_SERVERS does not "
                         "list (add it back, then retry the user)")
        self.server = server


def classify(error: BaseException) -> FailureKind:
    if isinstance(error, ServerWait):
        return FailureKind.NO_SERVER
    if isinstance(error, UnknownServerError):
        return FailureKind.PERMANENT
    if isinstance(error, AuthError):
        return FailureKind.AUTH
    if isinstance(error, RateLimitedError):
        return FailureKind.RATE_LIMITED
    if isinstance(error, ServiceUnavailableError):
        return FailureKind.UNAVAILABLE
    if isinstance(error, NotFoundError) and error.operation == "create_instance":
        # Create takes no instance in its path: a 404 means the route is not there (a wrong
        # EVOLUTION_API_BASE_URL), which would fail every user alike.
        return FailureKind.MISCONFIGURED
    if isinstance(error, AlreadyExistsError | PermanentError):
        return FailureKind.PERMANENT
    if isinstance(error, TransientError | InvalidResponseError | EvolutionError):
        return FailureKind.TRANSIENT
    if isinstance(error, TimeoutError | OSError):
        return FailureKind.UNAVAILABLE
    return FailureKind.TRANSIENT


_SERVICE_WIDE = frozenset({FailureKind.AUTH, FailureKind.MISCONFIGURED})


@dataclass(frozen=True)
class RetryPolicy:
    """The seed's policy: tried once, then `max_retries` retries after base, 2x, 4x ... ms."""

    max_retries: int = 3
    base_ms: int = 800

    def delay_s(self, retry_number: int) -> float:
        """Delay before retry `retry_number` (1-based): 0.8 s, 1.6 s, 3.2 s by default."""
        if retry_number < 1:
            raise ValueError("retry numbers start at 1")
        return float(self.base_ms * (2 ** (retry_number - 1))) / 1000.0


class Verdict(StrEnum):
    RETRY = "retry"  # pending again, one more retry spent, due after delay_s
    FAIL = "fail"  # failed for good
    RELEASE = "release"  # pending again, no retry spent (not the user's fault)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    retry_count: int
    delay_s: float
    message: str


def rate_limit_pause_s(retry_after_s: float | None) -> float:
    if retry_after_s is None:
        return RATE_LIMIT_DEFAULT_PAUSE_S
    return min(max(retry_after_s, 0.0), RATE_LIMIT_MAX_PAUSE_S)


def decide(
    kind: FailureKind,
    *,
    retry_count: int,
    policy: RetryPolicy,
    outage_open: bool,
    message: str,
    retry_after_s: float | None = None,
) -> Decision:
    """What happens to an entry whose attempt failed with `kind`."""
    if kind is FailureKind.NO_SERVER:  # a capacity wait, not an outage and not the user's
        delay = FLEET_WAIT_S if retry_after_s is None else retry_after_s
        return Decision(Verdict.RELEASE, retry_count, delay, message)
    if kind in _SERVICE_WIDE or (outage_open and kind is not FailureKind.PERMANENT):
        return Decision(Verdict.RELEASE, retry_count, 0.0, message)
    if kind is FailureKind.RATE_LIMITED:
        return Decision(Verdict.RELEASE, retry_count, rate_limit_pause_s(retry_after_s), message)
    if kind is FailureKind.PERMANENT:
        return Decision(Verdict.FAIL, retry_count, 0.0, message)
    if retry_count < policy.max_retries:
        spent = retry_count + 1
        return Decision(Verdict.RETRY, spent, policy.delay_s(spent), message)
    return Decision(
        Verdict.FAIL, retry_count, 0.0, f"{message} (gave up after {retry_count} retries)"
    )


def reclaim_limit_exceeded(reclaim_count: int, max_reclaims: int) -> bool:
    """A row whose lease expired more than `max_reclaims` times kills whoever takes it."""
    return reclaim_count > max_reclaims


def reclaim_failure_message(reclaim_count: int) -> str:
    return (
        f"abandoned: reclaimed {reclaim_count} times after its lease expired (the service "
        "died or hung while provisioning it); retry it by hand once the cause is fixed"
    )


@dataclass
class OutageDetector:
    """The global back-off: open on a 401, on a failed probe, or on `threshold` consecutive
    'unavailable' failures of different entries with no success between them; closed by a
    successful probe. While open, claiming pauses and failed attempts are not counted."""

    threshold: int = OUTAGE_FAILURE_THRESHOLD
    probe_min_s: float = PROBE_MIN_DELAY_S
    probe_max_s: float = PROBE_MAX_DELAY_S
    reason: str | None = None
    opened_at: float | None = None
    _failing_entries: set[int] = field(default_factory=set)
    _probe_delay_s: float = PROBE_MIN_DELAY_S

    @property
    def is_open(self) -> bool:
        return self.reason is not None

    def record_success(self) -> None:
        self._failing_entries.clear()

    def record_failure(self, kind: FailureKind, entry_id: int, now: float, message: str) -> bool:
        """Count a failure; True when it opens the back-off (it was closed before)."""
        if self.is_open:
            return False
        if kind is FailureKind.AUTH:
            self.open(f"Evolution API rejected the API key: {message}", now)
            return True
        if kind is FailureKind.MISCONFIGURED:
            self.open(f"Evolution API route missing (check EVOLUTION_API_BASE_URL): {message}",
                      now)
            return True
        if kind is FailureKind.UNAVAILABLE:
            self._failing_entries.add(entry_id)
            if len(self._failing_entries) >= self.threshold:
                self.open(f"Evolution API unavailable: {message}", now)
                return True
        return False

    def open(self, reason: str, now: float) -> None:
        if self.is_open:
            return
        self.reason = reason
        self.opened_at = now
        self._probe_delay_s = self.probe_min_s

    def next_probe_delay_s(self) -> float:
        """Capped exponential spacing of probes while open: 0.25, 0.5, 1, 2, 4, 5, 5 ... s."""
        delay = self._probe_delay_s
        self._probe_delay_s = min(self._probe_delay_s * 2, self.probe_max_s)
        return delay

    def close(self) -> None:
        self.reason = None
        self.opened_at = None
        self._failing_entries.clear()
        self._probe_delay_s = self.probe_min_s


@dataclass
class RateLimitPause:
    """A 429 pauses claiming for its Retry-After; the latest deadline wins."""

    until: float = 0.0

    def extend(self, now: float, pause_s: float) -> None:
        self.until = max(self.until, now + pause_s)

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.until - now)
