"""What reconcile shows: terminal-only progress, text and JSON forms, exit codes, metrics."""

from __future__ import annotations

import io
import uuid

from listener.config import Settings, load_settings
from listener.lifecycle.reconcile import DRIFT_KINDS, DriftItem, ReconcileReport
from listener.ops.metrics import Metrics
from listener.reconcile_cmd import TerminalProgress, exit_code, render_text

BASE = {"DATABASE_URL": "postgresql://u@127.0.0.1/db", "EVOLUTION_API_BASE_URL": "http://a",
        "EVOLUTION_API_KEY": "k", "SUPABASE_URL": "https://s.example"}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal() -> None:
    pipe, tty = io.StringIO(), _Tty()
    for stream in (pipe, tty):
        progress = TerminalProgress(stream)
        progress("webhooks", 10, 10)
        progress.clear()
    assert pipe.getvalue() == ""
    assert "reconcile: webhooks 10/10" in tty.getvalue()


def _report(applied_mode: bool, *, failed: int = 0) -> ReconcileReport:
    user = uuid.uuid4()
    item = DriftItem("missing_instance", f"evo-{user}", user, "recorded, but gone")
    return ReconcileReport([item], applied_mode=applied_mode, failed=failed)


def test_exit_codes() -> None:
    assert exit_code(ReconcileReport([])) == 0
    assert exit_code(_report(False)) == 1
    assert exit_code(_report(True)) == 0
    assert exit_code(_report(True, failed=1)) == 1


def test_json_has_the_six_kinds_even_at_zero() -> None:
    data = ReconcileReport([]).as_json()
    assert list(data) == ["counts", "drift", "applied"]
    assert data["counts"] == dict.fromkeys(DRIFT_KINDS, 0)
    assert set(DRIFT_KINDS) <= set(data["applied"])


def test_text_lists_items_and_counts() -> None:
    out = io.StringIO()
    render_text(_report(False), out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("reconcile (dry run): 1 drift item(s)")
    assert lines[1].split()[0] == "missing_instance"
    assert "missing_instance=1" in lines[-1]


def test_settings_defaults_and_switches() -> None:
    settings = load_settings(Settings, BASE)
    assert settings.deprovision is True and settings.reconcile_interval_s == 3600
    off = load_settings(Settings, {**BASE, "LISTENER_DEPROVISION": "off",
                                   "LISTENER_RECONCILE_INTERVAL_S": "0"})
    assert off.deprovision is False and off.reconcile_interval_s == 0


def test_metrics_expose_drift_per_kind_and_last_reconcile() -> None:
    metrics = Metrics()
    metrics.set_drift({**dict.fromkeys(DRIFT_KINDS, 0), "webhook_drift": 3})
    body, _ = metrics.render()
    text = body.decode()
    for kind in DRIFT_KINDS:
        value = 3.0 if kind == "webhook_drift" else 0.0
        assert f'evolution_listener_drift{{kind="{kind}"}} {value}' in text
    assert "evolution_listener_last_reconcile_timestamp_seconds 0.0" in text
    assert "evolution_listener_instances_vanished_again_total 0.0" in text
