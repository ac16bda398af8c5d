"""Reconcile (SPEC §9): compare the desired state (the tables) with the observed one (the
Evolution server), report the differences as six kinds of drift, repair them on request."""

from listener.lifecycle.reconcile.diff import diff, webhook_differences, webhook_targets
from listener.lifecycle.reconcile.model import (
    DRIFT_KINDS,
    DesiredState,
    DiffConfig,
    DriftItem,
    InstanceRow,
    ObservedState,
)
from listener.lifecycle.reconcile.run import ReconcileOptions, Reconciler, ReconcileReport

__all__ = [
    "DRIFT_KINDS",
    "DesiredState",
    "DiffConfig",
    "DriftItem",
    "InstanceRow",
    "ObservedState",
    "ReconcileOptions",
    "ReconcileReport",
    "Reconciler",
    "diff",
    "webhook_differences",
    "webhook_targets",
]
