"""`make profile`: py-spy of the service process during the instant-simulator drain.

Records `py-spy record --format raw` (collapsed stacks, 250 Hz, non-blocking) of the service
while it drains a 20,000-entry backlog (the `drain_0ms_x1` case, made longer for enough
samples; the bench's `--profile` switch, which also turns on pg_stat_statements), then writes
a summary a person can diff between two commits: the top 25 frames by own time, by
inclusive time, and own time per source file.
The figures of a profiled run are not clean (the sampler costs CPU): read shares, not rates.

Writes bench/results/profile-<label>.txt; the raw stacks (about 300 KB, not committed) go to
--raw (default /tmp/profile-<label>.pyspy.txt), for a flame graph.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/...`

from bench import cases, report
from bench.harness import summarize_pyspy

TOP = 25
LABEL = "drain_0ms_x1"


def _file(frame: str) -> str:
    """The file of a short frame (`func (db/store.py)` -> `db/store.py`)."""
    match = re.match(r"^.*? \((.*?)\)$", frame.strip())
    return match.group(1) if match else frame.strip()


class _BigBacklog(cases.Options):
    """The bench's options with a longer drain: enough samples at py-spy's 250 Hz."""

    @property
    def backlog(self) -> int:
        return 4000 if self.quick else 20000


def summarize(raw: Path, top: int = TOP) -> str:
    """Own and inclusive shares of py-spy's collapsed stacks, and own time per file."""
    spy = summarize_pyspy(raw, top=1_000_000)
    if not spy:
        return "no samples\n"
    files: dict[str, float] = {}
    for row in spy["self"]:
        files[_file(row["frame"])] = files.get(_file(row["frame"]), 0.0) + row["share"]

    def block(title: str, rows: list[tuple[str, float]]) -> list[str]:
        lines = [title, "-" * len(title)]
        lines += [f"{share:7.2%}  {name}" for name, share in rows[:top]]
        return [*lines, ""]

    out = [f"samples: {spy['samples']} (active only: py-spy skips idle threads)", ""]
    out += block(f"top {top} frames by own time",
                 [(row["frame"], row["share"]) for row in spy["self"]])
    out += block(f"top {top} files by own time",
                 sorted(files.items(), key=lambda kv: kv[1], reverse=True))
    out += block(f"top {top} frames by inclusive time",
                 [(row["frame"], row["share"]) for row in spy["inclusive"]])
    return "\n".join(out)


def _statements(result: dict[str, object]) -> str:
    """pg_stat_statements of the drain: calls per entry show the round trips per entry."""
    rows = result.get("pg_stat_statements")
    entries = result.get("completed")
    if not isinstance(rows, list) or not isinstance(entries, int) or entries <= 0:
        return ""
    lines = ["statements (pg_stat_statements, heaviest first)", "-" * 47]
    for row in rows:
        lines.append(f"{row['calls']:7d} calls ({row['calls'] / entries:5.3f}/entry) "
                     f"{row['total_ms']:9.1f} ms  {row['query'][:70]}")
    return "\n".join(["", *lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/profile_drain.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="latest",
                        help="names the summary: bench/results/profile-<label>.txt")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller backlog (4,000 instead of 20,000)")
    parser.add_argument("--concurrency", type=int, default=cases.CONCURRENCY,
                        help="LISTENER_CONCURRENCY of the service (the peer case uses 16)")
    parser.add_argument("--raw", type=Path, default=None,
                        help="where to keep py-spy's collapsed stacks")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        options = _BigBacklog(quick=args.quick, profile_dir=Path(tmp))
        result = cases.drain(options, 0.0, 1, args.concurrency)
        raw = Path(tmp) / f"{LABEL}.pyspy.txt"
        if not raw.exists():
            print("py-spy wrote nothing (is it installed? `make profile` installs it)",
                  file=sys.stderr)
            return 1
        header = (f"py-spy of the service during {LABEL} (backlog {result['backlog']}, "
                  f"concurrency {result['concurrency_per_replica']}), commit "
                  f"{report.git_commit()}\n"
                  f"throughput while profiled: {result['throughput_per_s']} entries/s, "
                  f"service CPU {result['cpu_ms_per_entry']['service']} ms/entry\n\n")
        text = header + summarize(raw) + _statements(result)
        out = report.RESULTS_DIR / f"profile-{args.label}.txt"
        out.write_text(text)
        raw_out = args.raw or Path(tempfile.gettempdir()) / f"profile-{args.label}.pyspy.txt"
        raw_out.write_text(raw.read_text())
    print(text)
    print(f"summary: {out}\nraw stacks: {raw_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
