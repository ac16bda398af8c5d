"""The metric names the shipped Grafana dashboard and Prometheus rules query, for tests that
hold them against what the service exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "evolution-listener.json"
RULES = ROOT / "deploy" / "prometheus" / "evolution-listener.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "evolution-listener.rules.test.yml"

# Series Prometheus itself makes for every target; no exporter exports them.
SYNTHETIC = frozenset({"up"})
_METRIC = re.compile(r"\b((?:evolution_listener|process)_[a-z0-9_]+|up)\b")


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in data["panels"] for t in panel.get("targets", [])]


def alert_rules() -> Iterator[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        yield from group["rules"]


def rule_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in alert_rules()]


def metric_names(exprs: list[str]) -> set[str]:
    """Every series name the expressions select (sample names: `_total`, `_bucket`, ...)."""
    return {name for expr in exprs for name in _METRIC.findall(expr)}
