"""The bench's own arithmetic for issue 13: the py-spy summary (own vs inclusive time) and
the peer comparison's figures in the report (ratio, medians, targets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.profile_drain import summarize

pytestmark = pytest.mark.unit

STACKS = """\
<module> (listener/cli.py:5);run (listener/aio.py:21);_send (listener/evolution/client.py:40) 6
<module> (listener/cli.py:5);run (listener/aio.py:21);execute (psycopg/cursor.py:9) 3
<module> (listener/cli.py:5);run (listener/aio.py:21) 1
not a stack line
"""


def test_pyspy_summary_ranks_own_and_inclusive_time(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(STACKS)
    text = summarize(raw, top=3)

    def rows(title: str) -> list[list[str]]:
        block = text.split(title)[1].split("\n\n")[0]
        return [line.split() for line in block.splitlines()[2:]]

    assert rows("top 3 frames by own time") == [
        ["60.00%", "_send", "(evolution/client.py)"],
        ["30.00%", "execute", "(psycopg/cursor.py)"],
        ["10.00%", "run", "(listener/aio.py)"]]
    assert rows("top 3 frames by inclusive time")[0][0] == "100.00%"
    assert rows("top 3 files by own time") == [["60.00%", "evolution/client.py"],
                                              ["30.00%", "psycopg/cursor.py"],
                                              ["10.00%", "listener/aio.py"]]
    assert text.startswith("samples: 10 ")


def _peer(drain_ratio: float, p99_ratio: float) -> dict[str, object]:
    return {"peer": {"drain_median_jobs_per_s": {"ours": 900.0, "pgqueuer": 600.0},
                     "drain_jobs_per_s": {"ours": [800.0, 900.0, 1000.0],
                                          "pgqueuer": [500.0, 600.0, 700.0]},
                     "drain_ratio": drain_ratio, "steady_p99_ratio": p99_ratio,
                     "steady_p99_median_ms": {"ours": 9.0, "pgqueuer": 10.0},
                     "steady_p99_ms": {"ours": [8.0, 9.0, 12.0], "pgqueuer": [10.0]},
                     "peak_rss_mib": {"ours": 63.0, "pgqueuer": 58.0}}}


def test_peer_figures_judge_the_issue_targets() -> None:
    rows = {row["key"]: row for row in report.evaluate(_peer(1.5, 0.9))}
    assert rows["peer_drain_ratio"]["verdict"] == "pass"
    assert rows["peer_p99_ratio"]["verdict"] == "pass"
    assert rows["peer_drain_ours"]["runs_range"] == [800.0, 1000.0]
    assert rows["peer_p99_pgq"]["runs_range"] is None  # one run: no range
    rows = {row["key"]: row for row in report.evaluate(_peer(1.49, 1.01))}
    assert rows["peer_drain_ratio"]["verdict"] == "MISS"
    assert rows["peer_p99_ratio"]["verdict"] == "MISS"


def test_peer_figures_are_absent_when_the_case_did_not_run() -> None:
    keys = {row["key"] for row in report.evaluate({})}
    assert not any(key.startswith("peer_") for key in keys)
