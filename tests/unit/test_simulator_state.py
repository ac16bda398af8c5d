"""The simulator's timestamps and row ids: Prisma's rendering, cheap to make (state.py)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from listener.dev.simulator.state import IdFactory, iso_now

pytestmark = pytest.mark.unit

PRISMA_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_iso_now_renders_the_current_time_as_prisma_does_across_seconds() -> None:
    seen_seconds = set()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and len(seen_seconds) < 2:
        before = datetime.now(UTC)
        text = iso_now()
        after = datetime.now(UTC)
        assert PRISMA_TIME.match(text), text
        stamp = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        # Truncated to the millisecond: never after `after`, never a ms before `before`.
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= stamp <= after
        seen_seconds.add(text[:19])
        time.sleep(0.01)
    assert len(seen_seconds) == 2  # the cached second moved on


def test_cuids_are_25_chars_repeatable_per_seed_and_differ_between_seeds() -> None:
    first, again, other = IdFactory(7), IdFactory(7), IdFactory(8)
    ids = [first.cuid() for _ in range(50)]
    assert all(re.fullmatch(r"c[a-z0-9]{24}", i) for i in ids)
    assert len(set(ids)) == 50
    assert ids == [again.cuid() for _ in range(50)]
    assert ids[0] != other.cuid()
