"""The back-off of SPEC §4, one per server (SPEC §10): an outage pauses only its server.

A registry of one OutageDetector per configured server name. Pure state, time passed in,
no I/O: the worker records outcomes under the server an attempt talked to, placement asks
which servers are backing off, /readyz asks whether any server can take work, and one
probe loop per open server closes it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from listener.policy import FailureKind, OutageDetector


class FleetHealth:
    """One back-off state per server name; an unknown name is a programming error."""

    def __init__(
        self, names: Iterable[str], detector: Callable[[], OutageDetector] = OutageDetector
    ) -> None:
        self._detectors = {name: detector() for name in names}
        if not self._detectors:
            raise ValueError("a fleet has at least one server")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._detectors)

    def detector(self, name: str) -> OutageDetector:
        """The server's own detector (for its probe loop's spacing)."""
        return self._detectors[name]

    def is_open(self, name: str) -> bool:
        return self._detectors[name].is_open

    def reason(self, name: str) -> str | None:
        return self._detectors[name].reason

    def record_failure(
        self, name: str, kind: FailureKind, entry_id: int, now: float, message: str
    ) -> bool:
        """Count a failure against `name` only; True when it opens that server's back-off."""
        return self._detectors[name].record_failure(kind, entry_id, now, message)

    def record_success(self, name: str) -> None:
        self._detectors[name].record_success()

    def open(self, name: str, reason: str, now: float) -> None:
        self._detectors[name].open(reason, now)

    def close(self, name: str) -> None:
        self._detectors[name].close()

    def backing_off(self) -> frozenset[str]:
        """The servers placement must skip and whose placed work must not be attempted."""
        return frozenset(name for name, d in self._detectors.items() if d.is_open)

    def any_available(self) -> bool:
        """False only when every server backs off: the one case /readyz answers 503."""
        return any(not d.is_open for d in self._detectors.values())

    def open_reasons(self) -> dict[str, str]:
        """name -> reason of every server backing off, for /readyz's JSON and the logs."""
        return {name: d.reason for name, d in self._detectors.items() if d.reason is not None}
