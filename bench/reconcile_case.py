"""The reconcile benchmark (issue 11): a dry run over a fleet at the simulator, as an operator
runs it (`evolution-listener reconcile --json`, its own process), at 0 ms and 50 ms latency.

Targets: at 50 ms, the find_webhook rate reaches >= 90 % of the LISTENER_CONCURRENCY ceiling
(concurrency / latency); at 0 ms, 10,000 instances in under 30 s on the 2-core VM; peak RSS
under 150 MiB. The fleet is built through the normal path (signups, then `drain`), so the
dry run must also report zero drift.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from bench.harness import (
    SimulatorProcess,
    _vm_hwm_bytes,
    console_script,
    fresh_database,
    service_env,
)
from bench.load import backlog
from listener.dev.embedded_pg import free_port

MIB = 1024 * 1024
CONCURRENCY = 8  # the default LISTENER_CONCURRENCY: the figure an operator gets
SAMPLE_S = 0.02


def _run_measured(args: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """Run a command; its wall time and the kernel's peak RSS (VmHWM, polled until exit)."""
    started = time.monotonic()
    proc = subprocess.Popen([*console_script(), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    deadline = started + timeout_s
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_bytes(proc.pid) or 0)
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate(timeout=10)
            raise RuntimeError(f"{args[0]} did not finish in {timeout_s:.0f}s")
        time.sleep(SAMPLE_S)
    out, err = proc.communicate(timeout=10)
    return {"code": proc.returncode, "stdout": out, "stderr": err[-2000:],
            "elapsed_s": time.monotonic() - started, "peak_rss_bytes": peak}


def _webhook_phase_s(sim: SimulatorProcess) -> tuple[float, int]:
    """From the simulator's own log: first find_webhook start to last end, and how many.
    (The rate of that phase, without the process's start-up, is what concurrency bounds.)"""
    reads = [r for r in sim.requests() if r.get("operation") == "find_webhook"]
    if not reads:
        return 0.0, 0
    first = min(float(r["started_at"]) for r in reads)
    last = max(float(r["started_at"]) + float(r.get("duration_s") or 0.0) for r in reads)
    return last - first, len(reads)


def reconcile_dry_run(quick: bool, latency_ms: float) -> dict[str, Any]:
    count = 500 if quick else 10_000
    with fresh_database() as db, SimulatorProcess(latency_ms=0.0) as sim:
        backlog(db.admin_dsn, count)
        env = {**service_env(db, sim, free_port(),
                             LISTENER_CONCURRENCY=str(CONCURRENCY)),
               "PATH": "/usr/bin:/bin"}
        drained = _run_measured(["drain"], env, 600)
        if drained["code"] != 0:
            raise RuntimeError(f"drain failed: {drained['stderr']}")
        # The request log only for the measured run (it costs the simulator CPU per request).
        sim.control({"latency_ms": latency_ms, "record_requests": True})
        run = _run_measured(["reconcile", "--json"], env, 1800)
        span_s, reads = _webhook_phase_s(sim)
    report = json.loads(run["stdout"]) if run["stdout"].strip() else {}
    if run["code"] != 0 or any(report.get("counts", {"unread": 1}).values()):
        # The fleet was built through the normal path: any drift here is a bug, not a figure.
        raise RuntimeError(f"reconcile exit {run['code']}, counts {report.get('counts')}: "
                           f"{run['stderr']}")
    elapsed = float(run["elapsed_s"])
    rate = reads / span_s if span_s else 0.0
    ceiling = CONCURRENCY / (latency_ms / 1000) if latency_ms > 0 else None
    return {
        "instances": count,
        "concurrency": CONCURRENCY,
        "simulator_latency_ms": latency_ms,
        "exit_code": run["code"],
        "drift_counts": report.get("counts"),
        "elapsed_s": round(elapsed, 2),
        "webhook_reads": reads,
        "webhook_phase_s": round(span_s, 2),
        "webhooks_per_s": round(rate, 1),
        "ceiling_per_s": round(ceiling, 1) if ceiling else None,
        "fraction_of_ceiling": round(rate / ceiling, 3) if ceiling else None,
        # Not `peak_rss_mib`: that key is the service process's figure (target < 80 MiB).
        "reconcile_peak_rss_mib": round(run["peak_rss_bytes"] / MIB, 1),
    }
