"""What the demo prints while it runs and at the end: a live progress line on a terminal
(plain periodic lines otherwise) and tables shaped like psql's."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from listener.dev.demo.stats import format_duration_ms

__all__ = ["PLAIN_EVERY_S", "TTY_EVERY_S", "Progress", "Snapshot", "psql_table"]

PLAIN_EVERY_S = 5.0
TTY_EVERY_S = 0.25


@dataclass
class Snapshot:
    """The queue as the progress display shows it."""

    elapsed_s: float = 0.0
    signed_up: int = 0
    provisioned: int = 0
    failed: int = 0
    retrying: int = 0
    waiting: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    rate_per_s: float = 0.0
    service_state: str = "starting"

    @property
    def unfinished(self) -> int:
        return self.retrying + self.waiting


class Progress:
    """A live line on a terminal, plain periodic lines otherwise (logs, CI, pipes)."""

    def __init__(self, out: TextIO, total: int, *, live: bool) -> None:
        self.out = out
        self.total = total
        self.live = live
        self.every_s = TTY_EVERY_S if live else PLAIN_EVERY_S
        self._last_plain = -PLAIN_EVERY_S
        self._drawn = False

    def show(self, snap: Snapshot, *, force: bool = False) -> None:
        if self.live:
            self._draw(snap)
        elif force or snap.elapsed_s - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = snap.elapsed_s
            self.out.write(self._plain(snap) + "\n")
            self.out.flush()

    def _latency(self, snap: Snapshot) -> str:
        if snap.p50_ms is None or snap.p95_ms is None:
            return "latency -"
        return (f"latency p50 {format_duration_ms(snap.p50_ms)} "
                f"p95 {format_duration_ms(snap.p95_ms)}")

    def _plain(self, snap: Snapshot) -> str:
        return (f"[{snap.elapsed_s:5.1f} s] signups {snap.signed_up}/{self.total}  "
                f"provisioned {snap.provisioned}  retrying {snap.retrying}  "
                f"failed {snap.failed}  in progress {snap.waiting}  "
                f"{snap.rate_per_s:.1f}/s  {self._latency(snap)}  service {snap.service_state}")

    def _draw(self, snap: Snapshot) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        done = snap.provisioned + snap.failed
        bar_width = max(10, min(30, width - 90))
        filled = int(bar_width * done / self.total) if self.total else bar_width
        bar = "#" * filled + "-" * (bar_width - filled)
        text = (f"[{bar}] {done}/{self.total}  signups {snap.signed_up}  "
                f"ok {snap.provisioned}  retrying {snap.retrying}  failed {snap.failed}  "
                f"{snap.rate_per_s:.1f}/s  {self._latency(snap)}")
        if snap.service_state != "ready":
            text += f"  [{snap.service_state}]"
        self.out.write("\r\x1b[2K" + text[: max(20, width - 1)])
        self.out.flush()
        self._drawn = True

    def finish(self) -> None:
        if self.live and self._drawn:
            self.out.write("\n")
            self.out.flush()


def psql_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as psql prints them (aligned, a header rule, the row count)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    lines = [" " + " | ".join(n.center(w) for n, w in zip(names, widths, strict=True))]
    lines.append("-" + "-+-".join("-" * w for w in widths) + "-")
    for row in cells:
        lines.append(" " + " | ".join(
            v.rjust(w) if _numeric(v) else v.ljust(w)
            for v, w in zip(row, widths, strict=True)))
    lines.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(("  " + line).rstrip() for line in lines)


def _cell(value: Any) -> str:
    """A value as psql shows it (a numeric in plain notation: 0.000..., never 0E-20)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
