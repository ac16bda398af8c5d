"""`evolution-listener reconcile`: run one reconcile and print it (an operator command, top
layer beside cli.py; the work itself is in listener.lifecycle.reconcile).

Output never carries a token: the report holds names, ids, user ids and field names only.
Progress goes to stderr, and only on a terminal, so pipes and --json stay clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from listener.evolution.errors import EvolutionError
from listener.lifecycle.reconcile import DRIFT_KINDS, ReconcileOptions, Reconciler
from listener.lifecycle.reconcile.run import ReconcileReport

EXIT_OK = 0
EXIT_DRIFT_OR_FAILED = 1
PROGRESS_EVERY_S = 0.25


class TerminalProgress:
    """`reconcile: webhooks 1234/10000` rewritten in place, at most 4 times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.active = stream.isatty()
        self._last = 0.0
        self._shown = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if done < total and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        self._shown = True
        self.stream.write(f"\rreconcile: {phase} {done}/{total}\x1b[K")
        self.stream.flush()

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def render_text(report: ReconcileReport, out: TextIO) -> None:
    mode = "apply" if report.applied_mode else "dry run"
    print(f"reconcile ({mode}): {len(report.items)} drift item(s); "
          f"{report.profiles_seen} profiles, {report.instances_seen} prefixed instances",
          file=out)
    for item in report.items:
        user = str(item.user_id) if item.user_id is not None else "-"
        line = f"  {item.kind:<22} {item.instance_name}  user={user}  {item.detail}"
        if item.repair is not None:
            line += f"  -> {item.repair}"
        print(line, file=out)
    counts = report.counts
    print("counts: " + " ".join(f"{kind}={counts[kind]}" for kind in DRIFT_KINDS), file=out)
    if report.applied_mode:
        applied = " ".join(f"{kind}={report.applied[kind]}" for kind in DRIFT_KINDS)
        print(f"applied: {applied} skipped={report.skipped} failed={report.failed}", file=out)


def exit_code(report: ReconcileReport) -> int:
    """Dry run: 1 when there is drift. Apply: 1 when a repair failed."""
    if report.applied_mode:
        return EXIT_DRIFT_OR_FAILED if report.failed else EXIT_OK
    return EXIT_DRIFT_OR_FAILED if report.has_drift else EXIT_OK


async def run_reconcile(service: Any, args: argparse.Namespace) -> int:
    """`service` is a listener.service.Service with its pool and client open."""
    progress = TerminalProgress(sys.stderr)
    options = ReconcileOptions.from_settings(service.settings, service.provisioner.webhook)
    reconciler = Reconciler(service.pool, service.clients, options, progress=progress)
    try:
        report = await reconciler.run(apply=args.apply, delete_orphans=args.delete_orphans)
    except EvolutionError as error:
        progress.clear()
        print(f"evolution-listener: reconcile: the Evolution API could not be read: {error}",
              file=sys.stderr, flush=True)
        return EXIT_DRIFT_OR_FAILED
    progress.clear()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        render_text(report, sys.stdout)
    return exit_code(report)
