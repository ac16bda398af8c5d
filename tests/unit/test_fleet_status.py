"""Readiness and wait reporting of the fleet (SPEC §10): 503 only when every server backs off."""

from __future__ import annotations

import pytest

from listener.fleet.placement import Placed, Wait, WaitReason
from listener.fleet.status import WaitChange, WaitWatch, fleet_readiness

pytestmark = pytest.mark.unit

FULL = Wait(WaitReason.ALL_FULL, "every active Evolution API server is full (a 2/2)")
OFF = Wait(WaitReason.ALL_BACKING_OFF, "every Evolution API server with room left is ...")


def test_ready_and_quiet_when_all_is_well() -> None:
    state = fleet_readiness(["a", "b"], {}, None)
    assert (state.ready, state.reason, state.details) == (True, None, {})


def test_not_ready_only_when_every_server_backs_off() -> None:
    some = fleet_readiness(["a", "b"], {"b": "Evolution API unavailable: refused"}, None)
    assert some.ready and some.details == {
        "backing_off": {"b": "Evolution API unavailable: refused"}}
    every = fleet_readiness(["a", "b"], {"a": "401", "b": "refused"}, None)
    assert not every.ready
    assert every.reason == "backing off: a: 401; b: refused"


def test_a_full_fleet_is_ready_with_the_reason() -> None:
    state = fleet_readiness(["a"], {}, FULL)
    assert state.ready
    assert state.reason == FULL.message
    assert state.details == {"placement": "all_full"}


def test_wait_watch_reports_transitions_only() -> None:
    watch = WaitWatch()
    assert watch.observe(Placed("a")) is None
    assert watch.observe(FULL) is WaitChange.STARTED and watch.full
    assert watch.observe(FULL) is None
    assert watch.observe(OFF) is WaitChange.STARTED and not watch.full
    assert watch.current == OFF
    assert watch.observe(Placed("b")) is WaitChange.RESUMED
    assert watch.current is None and not watch.full
    assert watch.observe(Placed("b")) is None
