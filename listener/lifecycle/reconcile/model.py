"""The values reconcile compares and reports. Plain data, no I/O.

Tokens (recorded and observed) are kept out of every repr and every JSON form: reconcile's
output is read by operators and pasted into tickets.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from listener.evolution.models import InstanceInfo, WebhookSpec, WebhookState

# SPEC §9, these exact names, in the order they are reported.
UNPROVISIONED_PROFILE: Final = "unprovisioned_profile"
MISSING_INSTANCE: Final = "missing_instance"
WEBHOOK_DRIFT: Final = "webhook_drift"
INSTANCE_ID_MISMATCH: Final = "instance_id_mismatch"
ORPHAN_INSTANCE: Final = "orphan_instance"
ORPHAN_ROW: Final = "orphan_row"
DRIFT_KINDS: Final[tuple[str, ...]] = (
    UNPROVISIONED_PROFILE,
    MISSING_INSTANCE,
    WEBHOOK_DRIFT,
    INSTANCE_ID_MISMATCH,
    ORPHAN_INSTANCE,
    ORPHAN_ROW,
)
# Queue statuses of a job still on its way (its outcome is not known yet).
IN_FLIGHT: Final = frozenset({"pending", "processing"})


@dataclass(frozen=True)
class InstanceRow:
    """One `evolution_instances` row, as recorded."""

    user_id: uuid.UUID
    instance_name: str
    instance_id: str | None = None
    token: str | None = field(default=None, repr=False)
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None
    server: str = "default"  # the Evolution server it is recorded on (SPEC §10)


@dataclass(frozen=True)
class DesiredState:
    """What the tables say: who exists, what is queued, what is recorded."""

    profiles: frozenset[uuid.UUID]
    creations: Mapping[uuid.UUID, str] = field(default_factory=dict)  # user -> status
    instance_rows: Mapping[uuid.UUID, InstanceRow] = field(default_factory=dict)
    deletions: Mapping[uuid.UUID, str] = field(default_factory=dict)  # user -> status


@dataclass(frozen=True)
class ObservedState:
    """What the server says. `instances`: the prefixed ones, by name. `webhooks`: the names
    whose webhook was read (None: no webhook was ever set); a name absent from it was not
    read (not needed, or gone meanwhile) and is not compared."""

    instances: Mapping[str, InstanceInfo]
    webhooks: Mapping[str, WebhookState | None] = field(default_factory=dict)
    # Many servers (SPEC §10): instance name -> the server it was found on (empty: one
    # server, everything is where it is recorded), and the servers whose list could not be
    # read this round (their recorded instances are neither missing nor orphaned).
    found_on: Mapping[str, str] = field(default_factory=dict)
    unobserved: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DiffConfig:
    prefix: str
    webhook: WebhookSpec


@dataclass
class DriftItem:
    """One difference. `repair` is filled in by --apply (what was done, or why not)."""

    kind: str
    instance_name: str
    user_id: uuid.UUID | None
    detail: str
    fields: tuple[str, ...] = ()
    repair: str | None = None
    repair_failed: bool = False
    server: str | None = None  # where the instance is (or would be): repairs talk to it

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "instance_name": self.instance_name,
            "user_id": None if self.user_id is None else str(self.user_id),
            "detail": self.detail,
        }
        if self.server is not None:
            out["server"] = self.server
        if self.fields:
            out["fields"] = list(self.fields)
        if self.repair is not None:
            out["repair"] = self.repair
            out["repair_failed"] = self.repair_failed
        return out


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(DRIFT_KINDS, 0)


def count_kinds(items: list[DriftItem]) -> dict[str, int]:
    counts = zero_counts()
    for item in items:
        counts[item.kind] += 1
    return counts
