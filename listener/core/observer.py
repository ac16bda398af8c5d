"""What the machinery reports as it works, as a Protocol: the core does not import the
metrics library (ops/metrics.py implements it; tests pass a recorder or `NullObserver`)."""

from __future__ import annotations

from typing import Protocol

from listener.core.outcome import Outcome


class WorkObserver(Protocol):
    def claimed(self, kind: str) -> None: ...

    def reclaimed(self, kind: str) -> None: ...

    def swept(self) -> None: ...

    def settled(self, kind: str, outcome: Outcome) -> None:
        """Every outcome but LOST (nothing was written for a lost lease)."""

    def completed_after(self, kind: str, latency_s: float) -> None:
        """Seconds from the entry's insert to its completion."""

    def backoff(self, server: str, active: bool) -> None: ...


class NullObserver:
    def claimed(self, kind: str) -> None:
        return None

    def reclaimed(self, kind: str) -> None:
        return None

    def swept(self) -> None:
        return None

    def settled(self, kind: str, outcome: Outcome) -> None:
        return None

    def completed_after(self, kind: str, latency_s: float) -> None:
        return None

    def backoff(self, server: str, active: bool) -> None:
        return None
