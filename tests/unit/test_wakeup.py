"""Notification payload validation and reconnect spacing (pure)."""

from __future__ import annotations

import random
import uuid

import pytest

from listener.wakeup import MalformedNotification, parse_notification, reconnect_delay_s

pytestmark = pytest.mark.unit


def test_the_triggers_payload_parses() -> None:
    user = uuid.uuid4()
    note = parse_notification(f'{{"id" : 12, "user_id" : "{user}"}}')
    assert (note.id, note.user_id) == (12, user)


@pytest.mark.parametrize(
    "payload",
    ["", "not json", "[1]", "null", '{"id": "1", "user_id": "x"}', '{"id": true, "user_id": "x"}',
     '{"id": 1}', '{"id": 1, "user_id": 5}', '{"id": 1, "user_id": "nope"}'],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload: str) -> None:
    with pytest.raises(MalformedNotification) as raised:
        parse_notification(payload)
    assert str(raised.value)


def test_reconnect_delay_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [reconnect_delay_s(n, rng=rng) for n in range(1, 12)]
    assert 0.1 <= delays[0] <= 0.2
    assert all(d <= 10.0 for d in delays)
    assert delays[-1] >= 5.0
    assert len({round(d, 6) for d in delays[-4:]}) == 4  # jitter: replicas do not align
