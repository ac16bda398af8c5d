"""How one claimed entry ended, and a tally of them (the `drain` command prints it)."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum


class Outcome(StrEnum):
    COMPLETED = "completed"
    RETRIED = "retried"  # pending again, one retry spent
    FAILED = "failed"
    RELEASED = "released"  # pending again, no retry spent (not the user's fault)
    LOST = "lost"  # the lease was gone before the outcome could be written


class Counts:
    """Outcomes so far; read by name (`counts.completed`)."""

    def __init__(self) -> None:
        self._by: Counter[Outcome] = Counter()

    def record(self, outcome: Outcome) -> None:
        self._by[outcome] += 1

    def __getitem__(self, outcome: Outcome) -> int:
        return self._by[outcome]

    @property
    def completed(self) -> int:
        return self._by[Outcome.COMPLETED]

    @property
    def retried(self) -> int:
        return self._by[Outcome.RETRIED]

    @property
    def failed(self) -> int:
        return self._by[Outcome.FAILED]

    @property
    def released(self) -> int:
        return self._by[Outcome.RELEASED]

    @property
    def lost(self) -> int:
        return self._by[Outcome.LOST]
