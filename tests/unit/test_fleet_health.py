"""Health per server (SPEC §10): an outage or a bad key on one server pauses only that one."""

from __future__ import annotations

import pytest

from listener.fleet.health import FleetHealth
from listener.policy import FailureKind, OutageDetector

pytestmark = pytest.mark.unit


def test_unavailability_opens_only_the_failing_server() -> None:
    health = FleetHealth(["a", "b", "c"])
    opened = [health.record_failure("a", FailureKind.UNAVAILABLE, entry, 1.0, "refused")
              for entry in (1, 2, 3)]
    assert opened == [False, False, True]
    assert health.is_open("a") and not health.is_open("b") and not health.is_open("c")
    assert health.backing_off() == {"a"}
    assert health.any_available()
    assert health.open_reasons() == {"a": "Evolution API unavailable: refused"}


def test_failures_on_different_servers_do_not_add_up() -> None:
    health = FleetHealth(["a", "b", "c"])
    for entry, name in enumerate(["a", "b", "c", "a", "b", "c"]):
        assert not health.record_failure(name, FailureKind.UNAVAILABLE, entry, 1.0, "reset")
    assert health.backing_off() == frozenset()


def test_a_success_resets_only_its_server_count() -> None:
    health = FleetHealth(["a", "b"])
    for entry in (1, 2):
        health.record_failure("a", FailureKind.UNAVAILABLE, entry, 1.0, "x")
        health.record_failure("b", FailureKind.UNAVAILABLE, entry, 1.0, "x")
    health.record_success("a")
    assert not health.record_failure("a", FailureKind.UNAVAILABLE, 3, 1.0, "x")
    assert health.record_failure("b", FailureKind.UNAVAILABLE, 3, 1.0, "x")


def test_a_bad_key_opens_its_server_at_once_and_a_probe_closes_it() -> None:
    health = FleetHealth(["a", "b"])
    assert health.record_failure("b", FailureKind.AUTH, 9, 5.0, "401")
    assert health.reason("b") == "Evolution API rejected the API key: 401"
    assert health.detector("b").opened_at == 5.0
    health.close("b")
    assert health.backing_off() == frozenset() and health.reason("b") is None


def test_unavailable_only_when_every_server_backs_off() -> None:
    health = FleetHealth(["a", "b"])
    health.open("a", "probe failed", 1.0)
    assert health.any_available()
    health.open("b", "probe failed", 2.0)
    assert not health.any_available()
    assert set(health.open_reasons()) == {"a", "b"}
    health.close("a")
    assert health.any_available()


def test_probe_spacing_is_per_server() -> None:
    health = FleetHealth(["a", "b"])
    health.open("a", "down", 0.0)
    health.open("b", "down", 0.0)
    assert [health.detector("a").next_probe_delay_s() for _ in range(3)] == [0.25, 0.5, 1.0]
    assert health.detector("b").next_probe_delay_s() == 0.25


def test_a_custom_detector_factory_and_unknown_names() -> None:
    health = FleetHealth(["a"], detector=lambda: OutageDetector(threshold=1))
    assert health.record_failure("a", FailureKind.UNAVAILABLE, 1, 0.0, "x")
    assert health.names == ("a",)
    with pytest.raises(KeyError):
        health.is_open("nope")
    with pytest.raises(ValueError, match="at least one"):
        FleetHealth([])
