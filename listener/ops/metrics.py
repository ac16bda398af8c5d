"""Prometheus metrics for the listener, on a registry of its own.

Why a class with typed attributes: the worker and the Evolution client update metrics at
a handful of places, and a typo in a metric or label name should be a mypy/AttributeError,
not a silently new series. Why a private `CollectorRegistry`: the global one would make
two `Metrics` in one process (tests, the demo running several replicas) collide.

Names follow the Prometheus conventions: `evolution_listener_` prefix, base units in the
name (`_seconds`), `_total` on counters. Label values that are known up front are
pre-initialised so their series exist at 0 (a `rate()` over a series that appears late
misses its first increment).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.process_collector import ProcessCollector

import listener

__all__ = [
    "EVOLUTION_REQUEST_BUCKETS_S",
    "NAMESPACE",
    "OUTCOMES",
    "PROVISIONING_LATENCY_BUCKETS_S",
    "QUEUE_STATUSES",
    "Metrics",
]

NAMESPACE = "evolution_listener"

# What happened to a claimed entry: completed, retried later, failed for good, or released
# back to pending without spending a retry (shutdown, global back-off).
OUTCOMES: tuple[str, ...] = ("completed", "retried", "failed", "released")
QUEUE_STATUSES: tuple[str, ...] = ("pending", "processing", "completed", "failed")

# Queue insert to completion: ~1 ms when the API is fast and the listener is awake, up to
# minutes when retries (0.8 + 1.6 + 3.2 s by default) or a global back-off intervene.
PROVISIONING_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# One Evolution API request: bounded by LISTENER_HTTP_TIMEOUT_S (10 s by default).
EVOLUTION_REQUEST_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class _ProcessCollector(ProcessCollector):
    """The standard process metrics, surviving the hardened unit's `ProcSubset=pid`.

    prometheus-client reads the boot time from /proc/stat, which `ProcSubset=pid` hides;
    without it the stock collector exports nothing at all. CLOCK_BOOTTIME gives the same
    boot time without /proc.
    """

    def _boot_time(self) -> float:
        try:
            with open(os.path.join(self._proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        boottime_clock = getattr(time, "CLOCK_BOOTTIME", None)
        if boottime_clock is None:  # not Linux: there is no /proc to read anyway
            return 0.0
        return time.time() - time.clock_gettime(boottime_clock)


class Metrics:
    """Every metric the service exports, on its own registry.

    Attributes (metric name; labels):
    - `provisioned`: evolution_listener_provisioned_total; outcome (creations only)
    - `deprovisioned`: evolution_listener_deprovisioned_total; outcome (deletions)
    - `provisioning_latency`: evolution_listener_provisioning_latency_seconds (histogram)
    - `evolution_request_duration`: evolution_listener_evolution_request_duration_seconds;
      operation, server
    - `evolution_errors`: evolution_listener_evolution_errors_total; operation, status, server
    - `queue_depth`: evolution_listener_queue_depth; state
    - `oldest_pending_age`: evolution_listener_oldest_pending_age_seconds
    - `listen_connected`: evolution_listener_listen_connected (0/1)
    - `listen_reconnects`: evolution_listener_listen_reconnects_total
    - `sweeps`: evolution_listener_sweeps_total
    - `reclaimed_leases`: evolution_listener_reclaimed_leases_total
    - `rescued`: evolution_listener_rescued_total; kind (rows of dead replicas made due)
    - `claimed`: evolution_listener_claimed_entries_total (rows, not statements)
    - `backoff_active`: evolution_listener_backoff_active (0/1); server
    - fleet (SPEC §10): servers_full (0/1), placement_waits_total{reason},
      placements_total{server}, server_instances{server}, server_in_flight{server},
      server_capacity{server} (no sample for an unlimited server), server_draining{server}
    - `build_info`: evolution_listener_build_info; version, python
    plus the standard process_* collector (memory, CPU, file descriptors).

    Label `status` is only ever an HTTP outcome (evolution_errors); the queue gauge's label
    is `state` (a queue row's status), so one name never means two things.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, version: str | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        ns = NAMESPACE

        self.provisioned = Counter(
            "provisioned",
            "Claimed queue entries by outcome "
            "(completed, retried, failed, released back to pending without spending a retry).",
            ["outcome"],
            namespace=ns,
            registry=reg,
        )
        self.deprovisioned = Counter(
            "deprovisioned",
            "Claimed deletion entries (deleted profiles) by outcome "
            "(completed, retried, failed, released back to pending without spending a retry).",
            ["outcome"],
            namespace=ns,
            registry=reg,
        )
        self.provisioning_latency = Histogram(
            "provisioning_latency_seconds",
            "Time from the queue row's insert to its completion, in seconds.",
            namespace=ns,
            registry=reg,
            buckets=PROVISIONING_LATENCY_BUCKETS_S,
        )
        self.evolution_request_duration = Histogram(
            "evolution_request_duration_seconds",
            "Evolution API request duration by operation and server, in seconds "
            "(errors included).",
            ["operation", "server"],
            namespace=ns,
            registry=reg,
            buckets=EVOLUTION_REQUEST_BUCKETS_S,
        )
        self.evolution_errors = Counter(
            "evolution_errors",
            "Failed Evolution API requests by operation and status "
            "(HTTP code such as 500 or 429, or timeout, reset, connect), per server.",
            ["operation", "status", "server"],
            namespace=ns,
            registry=reg,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "Queue entries by state (the row's status column), as last read from the database. "
            "Database-wide: every replica exports the same value, aggregate with max().",
            ["state"],
            namespace=ns,
            registry=reg,
        )
        self.oldest_pending_age = Gauge(
            "oldest_pending_age_seconds",
            "Age of the oldest pending queue entry in seconds (0 when none is pending). "
            "Database-wide: aggregate with max().",
            namespace=ns,
            registry=reg,
        )
        self.listen_connected = Gauge(
            "listen_connected",
            "1 while the LISTEN connection is up, else 0.",
            namespace=ns,
            registry=reg,
        )
        self.listen_reconnects = Counter(
            "listen_reconnects",
            "Reconnections of the LISTEN connection after a loss.",
            namespace=ns,
            registry=reg,
        )
        self.sweeps = Counter(
            "sweeps",
            "Sweeps of the queue table (at start, after reconnects, periodically).",
            namespace=ns,
            registry=reg,
        )
        self.reclaimed_leases = Counter(
            "reclaimed_leases",
            "Entries claimed again after another owner's lease expired.",
            namespace=ns,
            registry=reg,
        )
        self.rescued = Counter(
            "rescued",
            "Entries of a dead replica (its liveness lock gone) made due at once by this "
            "replica, instead of after their lease; each is then counted as reclaimed.",
            ["kind"],
            namespace=ns,
            registry=reg,
        )
        self.claimed = Counter(
            "claimed_entries",
            "Queue entries claimed (one per row, not per statement).",
            namespace=ns,
            registry=reg,
        )
        self.backoff_active = Gauge(
            "backoff_active",
            "1 while the back-off of this Evolution server (bad key, server down, 429) pauses "
            "the work placed on it.",
            ["server"],
            namespace=ns,
            registry=reg,
        )
        self.build_info = Info(
            "build",
            "Version of the running service.",
            namespace=ns,
            registry=reg,
        )
        self.build_info.info(
            {"version": version or listener.__version__, "python": platform.python_version()}
        )
        # The standard `process_*` names (no prefix), which stock dashboards and alerts know.
        _ProcessCollector(registry=reg)

        for outcome in OUTCOMES:
            self.provisioned.labels(outcome=outcome)
            self.deprovisioned.labels(outcome=outcome)
        for kind in ("creation", "deletion"):
            self.rescued.labels(kind=kind)
        self._queue_statuses: set[str] = set(QUEUE_STATUSES)
        for status in QUEUE_STATUSES:
            self.queue_depth.labels(state=status).set(0)
        self.listen_connected.set(0)
        self._init_lifecycle_metrics()
        self._init_fleet_metrics()

    def refresh_queue_gauges(
        self, counts: Mapping[str, int], oldest_pending_age_s: float | None
    ) -> None:
        """Set the queue gauges from one read of the table.

        A status missing from `counts` is set to 0 rather than left at its last value (the
        last `failed` row retried would otherwise be reported forever). `None` means no
        pending entry: age 0.
        """
        self._queue_statuses.update(counts)
        for status in self._queue_statuses:
            self.queue_depth.labels(state=status).set(counts.get(status, 0))
        age = oldest_pending_age_s if oldest_pending_age_s is not None else 0.0
        self.oldest_pending_age.set(max(0.0, age))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from an Accept header."""
        if not accept:
            return generate_latest(self.registry), "text/plain; version=0.0.4; charset=utf-8"
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # --- many Evolution servers (SPEC §10) ---------------------------------------------------

    def _init_fleet_metrics(self) -> None:
        reg, ns = self.registry, NAMESPACE
        self.servers_full = Gauge(
            "servers_full",
            "1 while every active Evolution server is full: new signups wait (a capacity "
            "alert, not an outage).", namespace=ns, registry=reg)
        self.placement_waits = Counter(
            "placement_waits", "Entries that found no Evolution server to be placed on, by "
            "reason (all_full, none_active, all_backing_off).",
            ["reason"], namespace=ns, registry=reg)
        self.placements = Counter(
            "placements", "New entries placed on an Evolution server.", ["server"],
            namespace=ns, registry=reg)
        self.server_instances = Gauge(
            "server_instances", "Instances recorded on each Evolution server (database-wide: "
            "aggregate with max()).", ["server"], namespace=ns, registry=reg)
        self.server_in_flight = Gauge(
            "server_in_flight", "Entries placed on each Evolution server and not finished.",
            ["server"], namespace=ns, registry=reg)
        self.server_capacity = Gauge(
            "server_capacity", "The configured capacity of each bounded Evolution server.",
            ["server"], namespace=ns, registry=reg)
        self.server_draining = Gauge(
            "server_draining", "1 for an Evolution server in state draining (no new "
            "placements).", ["server"], namespace=ns, registry=reg)
        self.servers_full.set(0)

    def init_servers(self, servers: Sequence[tuple[str, int | None, bool]]) -> None:
        """Label children for each configured server (name, capacity, draining), so every
        series exists from the first scrape."""
        for name, capacity, draining in servers:
            self.backoff_active.labels(server=name).set(0)
            self.placements.labels(server=name)
            self.server_instances.labels(server=name).set(0)
            self.server_in_flight.labels(server=name).set(0)
            if capacity is not None:
                self.server_capacity.labels(server=name).set(capacity)
            self.server_draining.labels(server=name).set(1 if draining else 0)

    def refresh_server_gauges(self, usage: Mapping[str, tuple[int, int]],
                              names: Sequence[str]) -> None:
        """server -> (instances, in flight), from one SERVER_USAGE read; a configured
        server missing from it holds nothing."""
        for name in {*names, *usage}:
            instances, in_flight = usage.get(name, (0, 0))
            self.server_instances.labels(server=name).set(instances)
            self.server_in_flight.labels(server=name).set(in_flight)

    # --- the instance's whole life (SPEC §9) ------------------------------------------------

    def _init_lifecycle_metrics(self) -> None:
        """Reconcile's figures (the kinds are reconcile's to name: it presets them at 0).

        - `drift`: evolution_listener_drift; kind
        - `last_reconcile`: evolution_listener_last_reconcile_timestamp_seconds (0: never)
        - `instances_vanished_again`: evolution_listener_instances_vanished_again_total
        """
        ns, reg = NAMESPACE, self.registry
        self.drift = Gauge(
            "drift",
            "Differences between the desired and the observed state at the last reconcile.",
            ["kind"],
            namespace=ns,
            registry=reg,
        )
        self.last_reconcile = Gauge(
            "last_reconcile_timestamp_seconds",
            "Unix time the last reconcile of this replica finished (0: none yet).",
            namespace=ns,
            registry=reg,
        )
        self.instances_vanished_again = Counter(
            "instances_vanished_again",
            "Instances missing again after reconcile re-created them: the Evolution server "
            "deletes instances by itself (as DEL_INSTANCE does).",
            namespace=ns,
            registry=reg,
        )

    def set_drift(self, counts: Mapping[str, int]) -> None:
        """The drift gauges, one per kind, from one reconcile's counts."""
        for kind, count in counts.items():
            self.drift.labels(kind=kind).set(count)

    def reconciled(self, finished_at: float) -> None:
        self.last_reconcile.set(finished_at)

    def vanished_again(self) -> None:
        self.instances_vanished_again.inc()

class WorkMetrics:
    """The core's `WorkObserver`, exported as these metrics. Outcomes per kind: creations
    in `provisioned_total` (the name predates deletions and keeps its meaning), deletions in
    `deprovisioned_total`; the provisioning latency is the creation kind's only."""

    CREATION = "creation"
    DELETION = "deletion"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Label children bound once: `labels()` per settled entry hashes and locks each time.
        self._provisioned = {outcome: metrics.provisioned.labels(outcome=outcome)
                             for outcome in OUTCOMES}
        self._deprovisioned = {outcome: metrics.deprovisioned.labels(outcome=outcome)
                               for outcome in OUTCOMES}

    def claimed(self, kind: str) -> None:
        self.metrics.claimed.inc()

    def reclaimed(self, kind: str) -> None:
        self.metrics.reclaimed_leases.inc()

    def swept(self) -> None:
        self.metrics.sweeps.inc()

    def settled(self, kind: str, outcome: str) -> None:
        if kind == self.CREATION:
            counter, children = self.metrics.provisioned, self._provisioned
        elif kind == self.DELETION:
            counter, children = self.metrics.deprovisioned, self._deprovisioned
        else:
            return
        child = children.get(str(outcome))
        if child is None:
            child = children[str(outcome)] = counter.labels(outcome=str(outcome))
        child.inc()

    def completed_after(self, kind: str, latency_s: float) -> None:
        if kind == self.CREATION:
            self.metrics.provisioning_latency.observe(latency_s)

    def backoff(self, server: str, active: bool) -> None:
        self.metrics.backoff_active.labels(server=server).set(1 if active else 0)

    # PlacementObserver (lifecycle/placing.py)
    def placed(self, server: str) -> None:
        self.metrics.placements.labels(server=server).inc()

    def placement_wait(self, reason: str, servers_full: bool) -> None:
        self.metrics.placement_waits.labels(reason=reason).inc()
        self.metrics.servers_full.set(1 if servers_full else 0)

    def placement_resumed(self) -> None:
        self.metrics.servers_full.set(0)
