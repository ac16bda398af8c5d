"""`make bench`: throughput, latency and cost figures of evolution-listener, as an operator
runs it (console script, own process) against the simulator and a fresh durable PostgreSQL
per case. Prints a table and writes bench/results/<date>-<host>.json.

Never a timed test: it reports, it does not assert (exit 0 even when a target is missed;
1 only when a case could not run). `--quick` is a small version of every case, for CI.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/run.py`

from bench import cases, harness, peer_case, reconcile_case, report
from listener.dev.embedded_pg import bin_dir

CASES: dict[str, Callable[[cases.Options], dict[str, Any]]] = {
    "calibration": cases.calibration,
    "trigger_overhead": cases.trigger_overhead,
    "claim_cost": cases.claim_cost,
    "steady_50": lambda o: cases.steady_latency(o, 50.0),
    "steady_200": lambda o: cases.steady_latency(o, 200.0),
    "drain_0ms_x1": lambda o: cases.drain(o, 0.0, 1),
    "drain_50ms_x1": lambda o: cases.drain(o, 50.0, 1),
    "drain_50ms_x3": lambda o: cases.drain(o, 50.0, 3),
    "crash": cases.crash,
    # Repeats itself, interleaved with one server (1 3 1 3 1 3): not in HEADLINE.
    "steady_200_servers3": lambda o: cases.steady_servers(o, 200.0, 3),
    "reconcile_0ms": lambda o: reconcile_case.reconcile_dry_run(o.quick, 0.0),
    "reconcile_50ms": lambda o: reconcile_case.reconcile_dry_run(o.quick, 50.0),
    # Repeats itself, interleaved with pgqueuer (A B A B A B): not in HEADLINE.
    "peer": peer_case.peer_comparison,
}

# Cases whose figures move from run to run on a shared 2-core VM: a full run repeats them,
# interleaved, and keeps the median run by this headline figure (all runs are in the file).
HEADLINE: dict[str, tuple[str, ...]] = {
    "steady_50": ("latency_ms", "p99"),
    "steady_200": ("latency_ms", "p99"),
    "steady_200_async_commit": ("latency_ms", "p99"),
    "drain_0ms_x1": ("throughput_per_s",),
    "drain_50ms_x1": ("throughput_per_s",),
    "drain_50ms_x3": ("throughput_per_s",),
}

# Not figures of the issue: what-if runs for the closing note (full runs only, or --only).
EXPERIMENTS: dict[str, Callable[[cases.Options], dict[str, Any]]] = {
    "steady_200_async_commit": lambda o: cases.steady_latency(o, 200.0, async_commit=True),
}


def _postgres_version() -> str:
    import subprocess

    try:
        out = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True,
                             text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip()


def _headline(name: str, result: dict[str, Any]) -> float | None:
    node: Any = result
    for step in HEADLINE.get(name, ()):
        node = node.get(step) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) else None


def _median_run(name: str, found: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose headline figure is the median; the others are kept beside it."""
    if len(found) == 1 or name not in HEADLINE:
        return found[-1]
    ranked = sorted(found, key=lambda run: _headline(name, run) or 0.0)
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["repeats"] = {
        "runs": len(found),
        "headline": ".".join(HEADLINE[name]),
        "values": [_headline(name, run) for run in found],
        "reported": "the median run",
    }
    chosen["other_runs"] = [run for run in found if run is not ranked[(len(ranked) - 1) // 2]]
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a small version of every case (under a minute)")
    parser.add_argument("--only", default="", metavar="CASES",
                        help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--peer-only", action="store_true",
                        help="only the comparison with pgqueuer (same as --only peer)")
    parser.add_argument("--profile", metavar="DIR", type=Path, default=None,
                        help="py-spy record the service and enable pg_stat_statements; "
                             "profiles go to DIR (the figures are then not clean)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results file (default bench/results/<date>-<host>.json)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--no-experiments", action="store_true",
                        help="skip the what-if runs a full run adds after the figures")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="runs of each latency/throughput case, the median one is "
                             "reported (default 3, quick 1)")
    parser.add_argument("--quiet-wait", type=float, default=None, metavar="S",
                        help="before each case, wait up to S seconds for the machine to be "
                             "idle (default 180, quick 0 = do not wait)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    every = {**CASES, **EXPERIMENTS}
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    if args.peer_only:
        selected = ["peer"]
    if not selected:
        selected = list(CASES)
        if not args.quick and not args.no_experiments:
            selected += list(EXPERIMENTS)
    unknown = [name for name in selected if name not in every]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(every)}",
              file=sys.stderr)
        return 2
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    options = cases.Options(quick=args.quick, profile_dir=args.profile)
    # A quick run (CI) must stay under a minute, so it does not wait for an idle machine.
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick
                                                                       else 180.0)
    repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))
    once = [name for name in selected if name not in HEADLINE]
    plan = once + [name for _ in range(repeat) for name in selected if name in HEADLINE]
    runs: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    started = time.monotonic()
    print(f"evolution-listener bench ({'quick' if args.quick else 'full'}): "
          f"{len(selected)} cases, {len(plan)} runs", flush=True)
    try:
        for name in plan:
            busy, waited = (harness.wait_for_quiet(quiet_wait) if quiet_wait > 0
                            else (harness.machine_busy_share(0.5), 0.0))
            case_started = time.monotonic()
            print(f"- {name} ...", end="", flush=True)
            try:
                with harness.MachineMeter() as meter:
                    result = every[name](options)
            except Exception as error:  # one broken case must not lose the others' figures
                errors[name] = f"{type(error).__name__}: {error}"
                print(f" FAILED: {errors[name][:300]}", flush=True)
                traceback.print_exc(limit=5)
                continue
            result["case_s"] = round(time.monotonic() - case_started, 1)
            result["machine"] = {"busy_before": round(busy, 3),
                                 "waited_for_quiet_s": round(waited, 1), **meter.report()}
            runs.setdefault(name, []).append(result)
            others = result["machine"]["other_users_share"]
            headline = _headline(name, result)
            print(f" {result['case_s']} s"
                  + (f"  [{'.'.join(HEADLINE[name])} = {headline}]" if headline is not None
                     else "")
                  + (f"  (other users of the machine took {others:.0%} of its CPU)"
                     if others >= 0.05 else ""), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every process and server this run started has been stopped",
              file=sys.stderr)
        return 130
    results = {name: _median_run(name, found) for name, found in runs.items()}
    figures = report.evaluate(results)
    document = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "profiled": args.profile is not None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": report.git_commit(),
        "machine": {**report.machine(), "postgres": _postgres_version()},
        "duration_s": round(time.monotonic() - started, 1),
        "figures": figures,
        "cases": results,
        "errors": errors,
    }
    # A subset run shows only the figures it measured.
    shown = [row for row in figures if row["value"] is not None] if args.only or \
        args.peer_only else figures
    print()
    print(report.table(shown or figures))
    if args.markdown:
        print()
        print(report.table(shown or figures, markdown=True))
    if not args.no_write:
        path = args.output or report.results_path(args.quick)
        report.write_results(path, document)
        print(f"\nresults: {path}  ({document['duration_s']} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
