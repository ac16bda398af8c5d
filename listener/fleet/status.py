"""What the fleet's state means for /readyz and for the logs (SPEC §10), as pure functions.

Readiness: 503 only when every server backs off; a full fleet or some servers backing off
are reported in the 200's JSON (a capacity alert is not an outage). Waits: one log line when
placement starts waiting and one when it places again, not one per entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from listener.fleet.placement import Placement, Wait, WaitReason


@dataclass(frozen=True)
class FleetReadiness:
    ready: bool
    reason: str | None  # why not ready, or what is degraded while ready
    details: dict[str, object] = field(default_factory=dict)  # extra /readyz JSON


def fleet_readiness(
    names: Sequence[str], open_reasons: Mapping[str, str], waiting: Wait | None
) -> FleetReadiness:
    """`open_reasons`: server -> back-off reason; `waiting`: the current placement wait."""
    if names and all(name in open_reasons for name in names):
        joined = "; ".join(f"{name}: {open_reasons[name]}" for name in names)
        return FleetReadiness(False, f"backing off: {joined}")
    details: dict[str, object] = {}
    reason = None
    if open_reasons:
        details["backing_off"] = dict(sorted(open_reasons.items()))
    if waiting is not None:
        details["placement"] = str(waiting.reason)
        reason = waiting.message
    return FleetReadiness(True, reason, details)


class WaitChange(StrEnum):
    STARTED = "started"  # log a WARNING with `WaitWatch.current.message`
    RESUMED = "resumed"  # log an INFO: placing again


@dataclass
class WaitWatch:
    """Remembers whether placement is waiting, and says when that changes."""

    current: Wait | None = None

    def observe(self, answer: Placement) -> WaitChange | None:
        """STARTED when placement starts waiting or waits for another reason, RESUMED when
        it places again after waiting, None when nothing changed."""
        if isinstance(answer, Wait):
            changed = self.current is None or self.current.reason is not answer.reason
            self.current = answer
            return WaitChange.STARTED if changed else None
        if self.current is not None:
            self.current = None
            return WaitChange.RESUMED
        return None

    @property
    def full(self) -> bool:
        """For the `servers_full` gauge: the last answer was 'every active server full'."""
        return self.current is not None and self.current.reason is WaitReason.ALL_FULL
