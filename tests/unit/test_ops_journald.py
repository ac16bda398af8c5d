"""Journald priorities: "<N>" before each line when stdout is the journal, so `journalctl -p
warning` filters; nothing of the kind on a plain pipe or a file."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from listener.ops.logging import configure_logging, syslog_priority, wants_syslog_prefix

pytestmark = pytest.mark.unit


def test_priorities() -> None:
    assert [syslog_priority(level) for level in (logging.CRITICAL, logging.ERROR,
            logging.WARNING, logging.INFO, logging.DEBUG)] == [3, 3, 4, 6, 7]


def test_auto_only_when_the_stream_is_the_journal_stream() -> None:
    assert wants_syslog_prefix("auto", "8:1234", (8, 1234))
    assert not wants_syslog_prefix("auto", "8:1234", (8, 999))   # redirected elsewhere
    assert not wants_syslog_prefix("auto", None, (8, 1234))      # not under systemd
    assert not wants_syslog_prefix("auto", "8:1234", None)       # no file descriptor
    assert wants_syslog_prefix("on", None, None)
    assert not wants_syslog_prefix("off", "8:1234", (8, 1234))


def _log_lines(tmp_path: Path, environ: dict[str, str], setting: str = "auto") -> list[str]:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        status = os.fstat(stream.fileno())
        env = {k: v.replace("DEV:INO", f"{status.st_dev}:{status.st_ino}")
               for k, v in environ.items()}
        configure_logging("json", "DEBUG", [], stream=stream, syslog_prefix=setting, environ=env)
        log = logging.getLogger("test.journald")
        log.error("boom")
        log.warning("careful")
        log.info("fine")
        log.debug("detail")
        stream.flush()
    configure_logging("text", "WARNING", [], stream=io.StringIO(), environ={})
    return [line for line in path.read_text().splitlines() if '"test.journald"' in line]


def test_json_lines_carry_the_priority_under_systemd(tmp_path: Path) -> None:
    lines = _log_lines(tmp_path, {"JOURNAL_STREAM": "DEV:INO"})
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<7>"]
    assert json.loads(lines[1][3:])["msg"] == "careful"   # the rest is the same JSON


def test_no_prefix_without_the_journal(tmp_path: Path) -> None:
    lines = _log_lines(tmp_path, {})
    assert lines and all(line.startswith("{") for line in lines)
    lines = _log_lines(tmp_path, {"JOURNAL_STREAM": "DEV:INO"}, setting="off")
    assert lines and all(line.startswith("{") for line in lines)
