"""From case results to the figures of issue 7: value, target, pass/miss; table and JSON.

The targets live here, next to how each figure is read from the results, so the printed
table, the results file and the README all say the same thing.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    read: Callable[[dict[str, Any]], float | None]
    target: str = ""
    ok: Callable[[float], bool] | None = None
    spread_of: str | None = None  # the repeated case whose headline this figure is
    runs: Callable[[dict[str, Any]], Any] | None = None  # a case's own list of repeats


def _get(results: dict[str, Any], *path: str | int) -> Any:
    node: Any = results
    for step in path:
        if isinstance(node, dict) and isinstance(step, str):
            node = node.get(step)
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        else:
            return None
    return node


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _replica_gain(r: dict[str, Any]) -> float | None:
    three = _num(_get(r, "drain_50ms_x3", "throughput_per_s"))
    one = _num(_get(r, "drain_50ms_x1", "throughput_per_s"))
    return three / one if three is not None and one else None


def _double_claims(r: dict[str, Any]) -> float | None:
    found = [_num(_get(r, case, "checks", "double_claims"))
             for case in ("drain_0ms_x1", "drain_50ms_x1", "drain_50ms_x3")]
    known = [v for v in found if v is not None]
    return sum(known) if known else None


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _peak_rss(r: dict[str, Any]) -> float | None:
    values: list[float] = []
    for case in r.values():
        if not isinstance(case, dict):
            continue
        peak = case.get("peak_rss_mib")
        for value in peak if isinstance(peak, list) else [peak]:
            number = _num(value)
            if number is not None:
                values.append(number)
    return max(values) if values else None


def _peer(*path: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: _num(_get(r, "peer", *path))


def _peer_runs(*path: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: _get(r, "peer", *path)


FIGURES: list[Figure] = [
    Figure("steady50_p50", "steady 50/s: p50", "ms", lambda r: _num(_get(
        r, "steady_50", "latency_ms", "p50"))),
    Figure("steady50_p95", "steady 50/s: p95", "ms", lambda r: _num(_get(
        r, "steady_50", "latency_ms", "p95"))),
    Figure("steady50_p99", "steady 50/s: p99", "ms", lambda r: _num(_get(
        r, "steady_50", "latency_ms", "p99")), spread_of="steady_50"),
    Figure("steady50_max", "steady 50/s: max", "ms", lambda r: _num(_get(
        r, "steady_50", "latency_ms", "max"))),
    Figure("steady200_p50", "steady 200/s: p50", "ms", lambda r: _num(_get(
        r, "steady_200", "latency_ms", "p50")), "<= 3", lambda v: v <= 3.0),
    Figure("steady200_p95", "steady 200/s: p95", "ms", lambda r: _num(_get(
        r, "steady_200", "latency_ms", "p95"))),
    Figure("steady200_p99", "steady 200/s: p99", "ms", lambda r: _num(_get(
        r, "steady_200", "latency_ms", "p99")), "<= 10", lambda v: v <= 10.0,
           spread_of="steady_200"),
    Figure("steady200_max", "steady 200/s: max", "ms", lambda r: _num(_get(
        r, "steady_200", "latency_ms", "max"))),
    Figure("drain_instant", "drain, instant simulator", "entries/s", lambda r: _num(_get(
        r, "drain_0ms_x1", "throughput_per_s")), ">= 2000", lambda v: v >= 2000,
           spread_of="drain_0ms_x1"),
    Figure("drain_50ms", "drain, 50 ms simulator", "entries/s", lambda r: _num(_get(
        r, "drain_50ms_x1", "throughput_per_s")), spread_of="drain_50ms_x1"),
    Figure("drain_50ms_fraction", "drain, 50 ms: share of 640/s ceiling", "", lambda r: _num(
        _get(r, "drain_50ms_x1", "fraction_of_ceiling")), ">= 0.90", lambda v: v >= 0.90),
    Figure("replicas3_50ms", "3 replicas, 50 ms: drain", "entries/s", lambda r: _num(_get(
        r, "drain_50ms_x3", "throughput_per_s")), spread_of="drain_50ms_x3"),
    Figure("replicas3_gain", "3 replicas vs 1 (50 ms)", "x", _replica_gain, ">= 2.0",
           lambda v: v >= 2.0),
    Figure("servers3_p99_one", "steady 200/s, 1 server: p99 (median)", "ms", lambda r: _num(
        _get(r, "steady_200_servers3", "medians", "p99_ms", "one_server"))),
    Figure("servers3_p99", "steady 200/s, 3 servers: p99 (median)", "ms", lambda r: _num(
        _get(r, "steady_200_servers3", "medians", "p99_ms", "3_servers"))),
    Figure("servers3_ratio", "3 servers vs 1: p99 (steady 200/s)", "x", lambda r: _num(_get(
        r, "steady_200_servers3", "p99_ratio")), "<= 1.10", lambda v: v <= 1.10),
    Figure("double_claims", "double claims (all drains)", "", _double_claims, "0",
           lambda v: v == 0),
    Figure("crash_p99", "kill -9 of 1 of 3 replicas: affected entries p99", "ms",
           lambda r: _num(_get(r, "crash", "affected_latency_ms", "p99")), "<= 5000",
           lambda v: v <= 5000),
    Figure("crash_max", "kill -9 of 1 of 3 replicas: affected entries max", "ms",
           lambda r: _num(_get(r, "crash", "affected_latency_ms", "max"))),
    Figure("crash_lost", "kill -9: entries lost or created twice", "", lambda r: _num(
        _get(r, "crash", "lost_or_duplicated")), "0", lambda v: v == 0),
    Figure("peak_rss", "peak RSS, service process", "MiB", _peak_rss, "< 80",
           lambda v: v < 80),
    Figure("claim_ratio", "claim cost, 1M completed vs empty (p50)", "x", lambda r: _num(_get(
        r, "claim_cost", "ratio_p50")), "< 1.5", lambda v: v < 1.5),
    Figure("trigger_overhead", "signup insert, trigger overhead (p50)", "%",
           lambda r: _percent(_num(_get(r, "trigger_overhead", "overhead_p50"))), "< 20",
           lambda v: v < 20),
    Figure("cpu_per_1000_drain", "CPU per 1000 entries (drain, instant)", "s", lambda r: _num(
        _get(r, "drain_0ms_x1", "cpu_s_per_1000"))),
    Figure("cpu_per_1000_steady", "CPU per 1000 entries (steady 200/s)", "s", lambda r: _num(
        _get(r, "steady_200", "cpu_s_per_1000"))),
    Figure("rtt_back_to_back", "machine: SELECT 1 round trip, back to back (p50)", "ms",
           lambda r: _num(_get(r, "calibration", "select1_back_to_back_ms", "p50"))),
    Figure("rtt_after_idle", "machine: SELECT 1 round trip after 10 ms idle (p50)", "ms",
           lambda r: _num(_get(r, "calibration", "select1_after_10ms_idle_ms", "p50"))),
    Figure("durable_commit", "machine: one durable INSERT commit (p50)", "ms",
           lambda r: _num(_get(r, "calibration", "durable_insert_commit_ms", "p50"))),
    # Reconcile (issue 11): a dry run over the fleet, its own process.
    Figure("reconcile_0ms", "reconcile dry run, instant simulator (10k instances)", "s",
           lambda r: _num(_get(r, "reconcile_0ms", "elapsed_s")), "< 30", lambda v: v < 30),
    Figure("reconcile_50ms_share", "reconcile, 50 ms: share of concurrency ceiling", "",
           lambda r: _num(_get(r, "reconcile_50ms", "fraction_of_ceiling")), ">= 0.90",
           lambda v: v >= 0.90),
    Figure("reconcile_rss", "peak RSS, reconcile process", "MiB", lambda r: max(
        (v for v in (_num(_get(r, c, "reconcile_peak_rss_mib"))
                     for c in ("reconcile_0ms", "reconcile_50ms")) if v is not None),
        default=None), "< 150", lambda v: v < 150),
    # What-if runs (experiments): shown only when they ran.
    Figure("steady200_async_p50", "what-if: steady 200/s, synchronous_commit=off: p50", "ms",
           lambda r: _num(_get(r, "steady_200_async_commit", "latency_ms", "p50"))),
    Figure("steady200_async_p99", "what-if: steady 200/s, synchronous_commit=off: p99", "ms",
           lambda r: _num(_get(r, "steady_200_async_commit", "latency_ms", "p99")),
           spread_of="steady_200_async_commit"),
    # The peer comparison (issue 13): medians of interleaved repeats, concurrency 16.
    Figure("peer_drain_ours", "vs pgqueuer: drain, ours (incl. start-up)", "entries/s",
           _peer("drain_median_jobs_per_s", "ours"),
           runs=_peer_runs("drain_jobs_per_s", "ours")),
    Figure("peer_drain_pgq", "vs pgqueuer: drain, pgqueuer (incl. start-up)", "entries/s",
           _peer("drain_median_jobs_per_s", "pgqueuer"),
           runs=_peer_runs("drain_jobs_per_s", "pgqueuer")),
    Figure("peer_drain_ratio", "vs pgqueuer: drain ratio (ours / pgqueuer)", "x",
           _peer("drain_ratio"), ">= 1.5", lambda v: v >= 1.5),
    Figure("peer_p99_ours", "vs pgqueuer: steady 200/s p99, ours", "ms",
           _peer("steady_p99_median_ms", "ours"), runs=_peer_runs("steady_p99_ms", "ours")),
    Figure("peer_p99_pgq", "vs pgqueuer: steady 200/s p99, pgqueuer", "ms",
           _peer("steady_p99_median_ms", "pgqueuer"),
           runs=_peer_runs("steady_p99_ms", "pgqueuer")),
    Figure("peer_p99_ratio", "vs pgqueuer: steady p99 ratio (ours / pgqueuer)", "x",
           _peer("steady_p99_ratio"), "<= 1.0", lambda v: v <= 1.0),
    Figure("peer_rss_ours", "vs pgqueuer: peak RSS, ours", "MiB",
           _peer("peak_rss_mib", "ours")),
    Figure("peer_rss_pgq", "vs pgqueuer: peak RSS, pgqueuer", "MiB",
           _peer("peak_rss_mib", "pgqueuer")),
]
_OPTIONAL = {"steady200_async_p50", "steady200_async_p99", "peer_drain_ours", "peer_drain_pgq",
             "peer_drain_ratio", "peer_p99_ours", "peer_p99_pgq", "peer_p99_ratio",
             "peer_rss_ours", "peer_rss_pgq"}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for figure in FIGURES:
        value = figure.read(results)
        if value is None and figure.key in _OPTIONAL:
            continue
        verdict = ""
        if figure.ok is not None:
            verdict = "n/a" if value is None else ("pass" if figure.ok(value) else "MISS")
        spread = None
        values: Any = None
        if figure.spread_of is not None:
            values = _get(results, figure.spread_of, "repeats", "values")
        elif figure.runs is not None:
            values = figure.runs(results)
        if isinstance(values, list) and len(values) > 1:
            known = [float(v) for v in values if isinstance(v, int | float)]
            spread = [round(min(known), 3), round(max(known), 3)] if known else None
        rows.append({"key": figure.key, "label": figure.label, "unit": figure.unit,
                     "value": None if value is None else round(value, 3),
                     "target": figure.target, "verdict": verdict, "runs_range": spread})
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("entries/s",):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:+.1f} %"
    if unit == "":
        return f"{value:.3g}" if value != int(value) else f"{int(value)}"
    return f"{value:.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def _range(row: dict[str, Any]) -> str:
    spread = row.get("runs_range")
    if not spread:
        return ""
    low, high = (_fmt(v, row["unit"]).split(" ")[0] for v in spread)
    return f"{low}-{high}"


def table(rows: list[dict[str, Any]], *, markdown: bool = False) -> str:
    """The figures as a text table (or a Markdown one for the README). `runs` is the range
    of that figure over the repeated runs (the median run is reported)."""
    lines = []
    if markdown:
        lines.append("| figure | measured | runs (min-max) | target | result |")
        lines.append("|---|---:|---:|---|---|")
        for row in rows:
            target = f"{row['target']} {row['unit']}".strip() if row["target"] else ""
            lines.append(f"| {row['label']} | {_fmt(row['value'], row['unit'])} | "
                         f"{_range(row)} | {target} | {row['verdict']} |")
        return "\n".join(lines)
    width = max(len(r["label"]) for r in rows) + 2
    lines.append(f"{'figure':<{width}}{'measured':>18}  {'runs':>13}   {'target':<20}result")
    lines.append("-" * (width + 18 + 2 + 13 + 3 + 20 + 6))
    for row in rows:
        target = f"{row['target']} {row['unit']}".strip() if row["target"] else ""
        lines.append(f"{row['label']:<{width}}{_fmt(row['value'], row['unit']):>18}  "
                     f"{_range(row):>13}   {target:<20}{row['verdict']}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where it ran: the figures mean little without it."""
    cpu = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    mem_gib = None
    try:
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(),
                          re.MULTILINE)
        mem_gib = round(int(found.group(1)) / 1024 / 1024, 1) if found else None
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    """HEAD's short hash, with `+dirty` when the working tree differs (read-only git calls:
    `--no-optional-locks` keeps `status` from refreshing the index)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=5, check=False)
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain"],
                                cwd=ROOT, capture_output=True, text=True, timeout=10,
                                check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if not commit:
        return None
    return f"{commit}+dirty" if status.stdout.strip() else commit


def results_path(quick: bool, when: datetime | None = None) -> Path:
    when = when or datetime.now(UTC)
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()) or "host"
    suffix = "-quick" if quick else ""
    return RESULTS_DIR / f"{when:%Y-%m-%d}-{host}{suffix}.json"


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write atomically (a `.tmp` then rename): a Ctrl-C never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(path)
