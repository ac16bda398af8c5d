"""`evolution-listener demo` as a new developer runs it, small: a subprocess, not on a terminal.

It must exit 0 with a summary where every signup is provisioned or failed by a designed
fault and nothing is pending, print plain progress lines (no terminal control codes when
not on a terminal), and leave no server or temporary directory behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture
def own_tmpdir() -> Iterator[Path]:
    """A TMPDIR for the demo alone: the shared /tmp also holds other runs' servers. Mode 755
    so the embedded server's unprivileged user (when root) can reach its directory."""
    path = Path(tempfile.mkdtemp(prefix="el-demo-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return int(match[1])


def test_demo_small_run_exits_0_with_everything_accounted_for(own_tmpdir: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "TEST_DATABASE_URL", "NOTIFY_SOCKET")}
    env["PYTHONUNBUFFERED"] = "1"
    env["TMPDIR"] = str(own_tmpdir)
    result = subprocess.run(
        [sys.executable, "-m", "listener", "demo", "--signups", "30", "--rate", "30"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=55, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{out}\n{result.stderr[-3000:]}"

    assert "\x1b[" not in out, "terminal control codes while not on a terminal"
    assert re.search(r"^\[\s*\d+\.\d s\] signups \d+/30 ", out, re.MULTILINE), out

    summary = out[out.index("Summary:"):]
    provisioned = _number(r"^\s+provisioned\s+(\d+)", summary)
    failed = _number(r"^\s+failed\s+(\d+)", summary)
    designed = _number(r"\((\d+) rejected by design", summary)
    unexplained = _number(r"simulated faults, (\d+) other\)", summary)
    pending = _number(r"^\s+pending\s+(\d+)", summary)
    assert designed == 2  # the default: two users rejected by design
    assert unexplained == 0  # no failure that no designed fault explains
    assert provisioned + failed == 30
    assert pending == 0
    assert _number(r"evolution_instances rows: (\d+)", summary) == provisioned
    assert re.search(r"all provisioned\s+p50\s+\S+ m?s\s+p95\s+\S+ m?s\s+p99\s+\S+ m?s", summary)
    assert "retried" in summary

    # The seed's monitoring query ran and shows the same figures.
    assert "The seed's monitoring query" in out
    assert re.search(rf"^\s+completed \|\s+{provisioned} \|", out, re.MULTILINE), out
    assert not re.search(r"^\s+pending \|", out, re.MULTILINE)

    # Everything it started is gone: no server directory, no demo directory.
    assert sorted(p.name for p in own_tmpdir.iterdir()) == []
