"""The shipped dashboard, alert rules and unit agree with what the service exports and with
how journald and Prometheus read them."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from listener.ops.metrics import Metrics
from tests.e2e.cli_helpers import parse_metrics
from tests.harness import ROOT
from tests.monitoring_names import (
    RULE_TESTS,
    RULES,
    SYNTHETIC,
    alert_rules,
    dashboard_exprs,
    metric_names,
    rule_exprs,
)

pytestmark = pytest.mark.unit

DATABASE_WIDE = ("evolution_listener_queue_depth", "evolution_listener_oldest_pending_age_seconds",
                 "evolution_listener_server_instances", "evolution_listener_server_in_flight")


def _exported_sample_names() -> set[str]:
    metrics = Metrics()
    # Labelled series appear once their labels are used (the service's first request).
    metrics.init_servers([("a", 80, False), ("b", None, True)])
    metrics.evolution_request_duration.labels(operation="create_instance",
                                              server="a").observe(0.1)
    metrics.evolution_errors.labels(operation="create_instance", status="500",
                                    server="a").inc()
    body, _ = metrics.render()
    return {name for name, _ in parse_metrics(body.decode())}


def test_every_metric_the_dashboard_and_rules_name_is_exported() -> None:
    named = metric_names(dashboard_exprs() + rule_exprs()) - SYNTHETIC
    assert named, "no metric found in the dashboard or the rules"
    assert named <= _exported_sample_names(), named - _exported_sample_names()


def test_dashboard_covers_the_operators_questions() -> None:
    named = metric_names(dashboard_exprs())
    for needed in ("evolution_listener_provisioned_total",
                   "evolution_listener_provisioning_latency_seconds_bucket",
                   "evolution_listener_queue_depth",
                   "evolution_listener_oldest_pending_age_seconds",
                   "evolution_listener_backoff_active",
                   "evolution_listener_server_instances",
                   "evolution_listener_server_capacity",
                   "evolution_listener_servers_full",
                   "evolution_listener_listen_reconnects_total"):
        assert needed in named, needed


def test_database_wide_gauges_are_never_summed_over_replicas() -> None:
    for expr in dashboard_exprs() + rule_exprs():
        for gauge in DATABASE_WIDE:
            if gauge in expr:
                assert re.search(rf"max(?: by \([^)]*\))? ?\({gauge}\b", expr), expr


def test_every_alert_waits_before_firing() -> None:
    rules = list(alert_rules())
    assert len(rules) >= 5
    for rule in rules:
        assert "alert" in rule and rule.get("for"), rule.get("alert")
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "warning")


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (make lint installs it)")
def test_promtool_checks_and_tests_the_rules() -> None:
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_keeps_syslog_level_prefixes() -> None:
    unit = (ROOT / "deploy" / "evolution-listener.service").read_text()
    settings = [line.split("=", 1)[1].strip() for line in unit.splitlines()
                if line.startswith("SyslogLevelPrefix=")]
    assert settings == ["true"]
