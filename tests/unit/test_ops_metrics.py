"""Metrics: names, units, types and values, read back through the Prometheus text parser."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

import listener
from listener.ops import metrics as ops_metrics
from listener.ops.metrics import OUTCOMES, QUEUE_STATUSES, Metrics

pytestmark = pytest.mark.unit

# name (as the parser reports the family) -> type
EXPECTED = {
    "evolution_listener_provisioned": "counter",
    "evolution_listener_provisioning_latency_seconds": "histogram",
    "evolution_listener_evolution_request_duration_seconds": "histogram",
    "evolution_listener_evolution_errors": "counter",
    "evolution_listener_queue_depth": "gauge",
    "evolution_listener_oldest_pending_age_seconds": "gauge",
    "evolution_listener_listen_connected": "gauge",
    "evolution_listener_listen_reconnects": "counter",
    "evolution_listener_sweeps": "counter",
    "evolution_listener_reclaimed_leases": "counter",
    "evolution_listener_claimed_entries": "counter",
    "evolution_listener_backoff_active": "gauge",
    "evolution_listener_servers_full": "gauge",
    "evolution_listener_placement_waits": "counter",
    "evolution_listener_placements": "counter",
    "evolution_listener_server_instances": "gauge",
    "evolution_listener_server_in_flight": "gauge",
    "evolution_listener_server_capacity": "gauge",
    "evolution_listener_server_draining": "gauge",
    # Info is exposed as a gauge of value 1 in the Prometheus text format.
    "evolution_listener_build_info": "gauge",
}


def _families(metrics: Metrics) -> dict[str, Metric]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _value(metrics: Metrics, sample_name: str, **labels: str) -> float:
    for family in _families(metrics).values():
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {sample_name}{labels}")


def test_every_metric_is_exported_with_its_type_and_prefix() -> None:
    families = _families(Metrics())
    for name, kind in EXPECTED.items():
        assert name in families, f"missing {name}"
        assert families[name].type == kind, name
    for name in families:
        assert name.startswith(("evolution_listener_", "process_")), name


def test_counters_end_in_total_and_time_is_in_seconds() -> None:
    families = _families(Metrics())
    for family in families.values():
        if family.type == "counter":
            totals = [s for s in family.samples if not s.name.endswith("_created")]
            assert all(s.name.endswith("_total") for s in totals), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert "_ms" not in family.name and "millisecond" not in family.name


def test_two_instances_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.sweeps.inc()
    assert _value(first, "evolution_listener_sweeps_total") == 1
    assert _value(second, "evolution_listener_sweeps_total") == 0


def test_outcomes_exist_at_zero_and_count() -> None:
    metrics = Metrics()
    for outcome in OUTCOMES:
        assert _value(metrics, "evolution_listener_provisioned_total", outcome=outcome) == 0
    metrics.provisioned.labels(outcome="completed").inc()
    metrics.provisioned.labels(outcome="completed").inc()
    metrics.provisioned.labels(outcome="released").inc()
    assert _value(metrics, "evolution_listener_provisioned_total", outcome="completed") == 2
    assert _value(metrics, "evolution_listener_provisioned_total", outcome="released") == 1
    assert _value(metrics, "evolution_listener_provisioned_total", outcome="failed") == 0


def test_provisioning_latency_buckets_span_1ms_to_600s() -> None:
    metrics = Metrics()
    metrics.provisioning_latency.observe(0.0004)
    metrics.provisioning_latency.observe(0.003)
    metrics.provisioning_latency.observe(450.0)
    metrics.provisioning_latency.observe(1200.0)
    name = "evolution_listener_provisioning_latency_seconds_bucket"
    bounds = [
        s.labels["le"]
        for s in _families(metrics)["evolution_listener_provisioning_latency_seconds"].samples
        if s.name == name
    ]
    assert float(bounds[0]) == 0.001
    assert float(bounds[-2]) == 600.0
    assert bounds[-1] == "+Inf"
    assert _value(metrics, name, le="0.001") == 1
    assert _value(metrics, name, le="0.005") == 2
    assert _value(metrics, name, le="600.0") == 3
    assert _value(metrics, name, le="+Inf") == 4
    assert _value(metrics, "evolution_listener_provisioning_latency_seconds_count") == 4


def test_evolution_request_duration_and_errors_by_operation_and_status() -> None:
    metrics = Metrics()
    metrics.evolution_request_duration.labels(operation="create_instance",
                                              server="a").observe(0.02)
    for status in ("500", "429", "timeout", "reset", "connect", "500"):
        metrics.evolution_errors.labels(operation="create_instance", status=status,
                                        server="a").inc()
    metrics.evolution_errors.labels(operation="create_instance", status="500",
                                    server="b").inc()
    assert (
        _value(
            metrics,
            "evolution_listener_evolution_request_duration_seconds_count",
            operation="create_instance",
            server="a",
        )
        == 1
    )
    errors = "evolution_listener_evolution_errors_total"
    assert _value(metrics, errors, operation="create_instance", status="500", server="a") == 2
    assert _value(metrics, errors, operation="create_instance", status="500", server="b") == 1
    assert _value(metrics, errors, operation="create_instance", status="timeout",
                  server="a") == 1


def test_refresh_queue_gauges_resets_statuses_that_disappear() -> None:
    metrics = Metrics()
    depth = "evolution_listener_queue_depth"
    age = "evolution_listener_oldest_pending_age_seconds"
    for status in QUEUE_STATUSES:
        assert _value(metrics, depth, state=status) == 0

    metrics.refresh_queue_gauges({"pending": 3, "failed": 2, "surprise": 1}, 12.5)
    assert _value(metrics, depth, state="pending") == 3
    assert _value(metrics, depth, state="failed") == 2
    assert _value(metrics, depth, state="surprise") == 1
    assert _value(metrics, depth, state="completed") == 0
    assert _value(metrics, age) == 12.5

    metrics.refresh_queue_gauges({"completed": 5}, None)
    assert _value(metrics, depth, state="pending") == 0
    assert _value(metrics, depth, state="failed") == 0
    assert _value(metrics, depth, state="surprise") == 0
    assert _value(metrics, depth, state="completed") == 5
    assert _value(metrics, age) == 0


def test_state_gauges_and_counters() -> None:
    metrics = Metrics()
    assert _value(metrics, "evolution_listener_listen_connected") == 0
    metrics.init_servers([("a", 80, False), ("b", None, True)])
    assert _value(metrics, "evolution_listener_backoff_active", server="a") == 0
    assert _value(metrics, "evolution_listener_server_capacity", server="a") == 80
    assert _value(metrics, "evolution_listener_server_draining", server="b") == 1
    metrics.listen_connected.set(1)
    metrics.backoff_active.labels(server="b").set(1)
    metrics.listen_reconnects.inc()
    metrics.reclaimed_leases.inc(2)
    metrics.claimed.inc(7)
    assert _value(metrics, "evolution_listener_listen_connected") == 1
    assert _value(metrics, "evolution_listener_backoff_active", server="b") == 1
    assert _value(metrics, "evolution_listener_backoff_active", server="a") == 0
    assert _value(metrics, "evolution_listener_listen_reconnects_total") == 1
    assert _value(metrics, "evolution_listener_reclaimed_leases_total") == 2
    assert _value(metrics, "evolution_listener_claimed_entries_total") == 7


def test_build_info_names_the_version() -> None:
    families = _families(Metrics())
    [sample] = families["evolution_listener_build_info"].samples
    assert sample.name == "evolution_listener_build_info"
    assert sample.labels["version"] == listener.__version__
    assert sample.value == 1
    assert sample.labels["python"] == ".".join(map(str, sys.version_info[:3]))
    other = _families(Metrics(version="9.9.9"))["evolution_listener_build_info"]
    assert other.samples[0].labels["version"] == "9.9.9"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_process_metrics_use_the_standard_names() -> None:
    families = _families(Metrics())
    assert "process_resident_memory_bytes" in families
    assert "process_open_fds" in families
    assert not [name for name in families if name.startswith("evolution_listener_process_")]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_process_metrics_survive_a_proc_without_stat(tmp_path: Path) -> None:
    # Under the unit's ProcSubset=pid, /proc/stat (boot time) is hidden but /proc/self is
    # not; the stock collector would then export nothing.
    (tmp_path / "self").symlink_to("/proc/self")
    collector = ops_metrics._ProcessCollector(namespace="x", proc=str(tmp_path), registry=None)
    names = {family.name for family in collector.collect()}
    assert "x_process_resident_memory_bytes" in names
    assert "x_process_start_time_seconds" in names


def test_openmetrics_is_negotiated() -> None:
    body, content_type = Metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")
