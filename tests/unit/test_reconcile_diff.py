"""The drift diff is pure: every kind, and every precedence rule of SPEC §9."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from listener.config import WEBHOOK_EVENTS
from listener.evolution.errors import RateLimitedError, ServiceUnavailableError
from listener.evolution.models import ALL_WEBHOOK_EVENTS, InstanceInfo, WebhookSpec, WebhookState
from listener.lifecycle.reconcile import (
    DRIFT_KINDS,
    DesiredState,
    DiffConfig,
    DriftItem,
    InstanceRow,
    ObservedState,
    diff,
    webhook_differences,
    webhook_targets,
)
from listener.lifecycle.reconcile.diff import user_of
from listener.lifecycle.reconcile.patience import Patience
from listener.lifecycle.reconcile.run import ReconcileReport

URL = "https://ref.supabase.co/functions/v1/evolution-webhook-handler"
SPEC = WebhookSpec(url=URL, events=WEBHOOK_EVENTS)
AUTH_SPEC = WebhookSpec(url=URL, events=WEBHOOK_EVENTS, headers={"Authorization": "Bearer s3"})
CONFIG = DiffConfig(prefix="evo-", webhook=SPEC)


def good_hook(**changes: object) -> WebhookState:
    values: dict[str, object] = {"url": URL, "enabled": True, "events": tuple(WEBHOOK_EVENTS),
                                 "headers": {}, "by_events": False, "base64": False}
    values.update(changes)
    return WebhookState(**values)  # type: ignore[arg-type]


def name(user: uuid.UUID) -> str:
    return f"evo-{user}"


def server(user: uuid.UUID, *, instance_id: str = "id-1",
           token: str = "tok-1") -> InstanceInfo:  # noqa: S107
    return InstanceInfo(name(user), instance_id, "WHATSAPP-BAILEYS", token, "close")


def row(user: uuid.UUID, *, instance_id: str = "id-1", token: str = "tok-1",  # noqa: S107
        url: str = URL) -> InstanceRow:
    return InstanceRow(user, name(user), instance_id, token, url, tuple(WEBHOOK_EVENTS))


def healthy(user: uuid.UUID) -> tuple[DesiredState, ObservedState]:
    desired = DesiredState(profiles=frozenset({user}), creations={user: "completed"},
                           instance_rows={user: row(user)})
    observed = ObservedState(instances={name(user): server(user)},
                             webhooks={name(user): good_hook()})
    return desired, observed


def kinds(items: list[DriftItem]) -> list[str]:
    return [item.kind for item in items]


def test_a_healthy_user_has_no_drift() -> None:
    user = uuid.uuid4()
    assert diff(*healthy(user), CONFIG) == []


def test_profile_with_neither_queue_row_nor_instance_row_is_unprovisioned() -> None:
    user = uuid.uuid4()
    items = diff(DesiredState(profiles=frozenset({user})), ObservedState(instances={}), CONFIG)
    assert kinds(items) == ["unprovisioned_profile"]
    assert (items[0].user_id, items[0].instance_name) == (user, name(user))


def test_unprovisioned_profile_with_an_instance_is_not_also_an_orphan_instance() -> None:
    user = uuid.uuid4()
    items = diff(DesiredState(profiles=frozenset({user})),
                 ObservedState(instances={name(user): server(user)}), CONFIG)
    assert kinds(items) == ["unprovisioned_profile"]


@pytest.mark.parametrize("status", ["pending", "processing"])
def test_creation_on_its_way_is_not_drift(status: str) -> None:
    user = uuid.uuid4()
    desired = DesiredState(profiles=frozenset({user}), creations={user: status})
    assert diff(desired, ObservedState(instances={}), CONFIG) == []


@pytest.mark.parametrize(("creations", "rows"), [("completed", False), ("completed", True),
                                                 (None, True), ("failed", True)])
def test_recorded_or_completed_without_server_instance_is_missing(
    creations: str | None, rows: bool
) -> None:
    user = uuid.uuid4()
    desired = DesiredState(
        profiles=frozenset({user}),
        creations={user: creations} if creations else {},
        instance_rows={user: row(user)} if rows else {},
    )
    assert kinds(diff(desired, ObservedState(instances={}), CONFIG)) == ["missing_instance"]


def test_failed_creation_never_recorded_is_not_missing_instance() -> None:
    user = uuid.uuid4()
    desired = DesiredState(profiles=frozenset({user}), creations={user: "failed"})
    assert diff(desired, ObservedState(instances={}), CONFIG) == []


@pytest.mark.parametrize("deletion", ["pending", "processing"])
def test_user_being_deleted_is_not_missing_instance(deletion: str) -> None:
    user = uuid.uuid4()
    desired, _ = healthy(user)
    desired = DesiredState(profiles=desired.profiles, creations=desired.creations,
                           instance_rows=desired.instance_rows, deletions={user: deletion})
    assert diff(desired, ObservedState(instances={}), CONFIG) == []


@pytest.mark.parametrize(("change", "fields"), [
    ({"url": "https://elsewhere/x"}, ["url"]),
    ({"events": ("SEND_MESSAGE",)}, ["events"]),
    ({"events": ALL_WEBHOOK_EVENTS}, ["events"]),
    ({"enabled": False}, ["enabled"]),
    ({"by_events": True}, ["byEvents"]),
    ({"base64": True}, ["base64"]),
    ({"url": "https://elsewhere/x", "base64": True}, ["url", "base64"]),
])
def test_each_webhook_field_is_compared(change: dict[str, object], fields: list[str]) -> None:
    assert webhook_differences(good_hook(**change), SPEC) == fields


def test_events_compare_as_a_set() -> None:
    assert webhook_differences(good_hook(events=tuple(reversed(WEBHOOK_EVENTS))), SPEC) == []


def test_no_webhook_at_all_is_drift() -> None:
    assert webhook_differences(None, SPEC) == ["webhook"]


def test_authorization_header_is_compared_only_when_configured() -> None:
    assert webhook_differences(good_hook(), AUTH_SPEC) == ["header:Authorization"]
    assert webhook_differences(good_hook(headers={"Authorization": "Bearer old"}),
                               AUTH_SPEC) == ["header:Authorization"]
    assert webhook_differences(good_hook(headers={"authorization": "Bearer s3"}), AUTH_SPEC) == []
    assert webhook_differences(good_hook(headers={"Authorization": "Bearer x"}), SPEC) == []


def test_webhook_drift_item_names_fields_and_never_the_header_value() -> None:
    user = uuid.uuid4()
    desired, observed = healthy(user)
    observed = ObservedState(instances=observed.instances,
                             webhooks={name(user): good_hook(headers={"Authorization": "old"})})
    items = diff(desired, observed, DiffConfig(prefix="evo-", webhook=AUTH_SPEC))
    assert kinds(items) == ["webhook_drift"]
    assert items[0].fields == ("header:Authorization",)
    assert "Bearer s3" not in str(items[0].as_json()) and "old" not in items[0].detail


def test_recorded_webhook_that_differs_from_configuration_is_webhook_drift() -> None:
    user = uuid.uuid4()
    desired, observed = healthy(user)
    desired = DesiredState(profiles=desired.profiles, creations=desired.creations,
                           instance_rows={user: row(user, url="https://old/url")})
    items = diff(desired, observed, CONFIG)
    assert kinds(items) == ["webhook_drift"] and items[0].fields == ("recorded_url",)


def test_webhook_not_read_is_not_compared() -> None:
    user = uuid.uuid4()
    desired, observed = healthy(user)
    assert diff(desired, ObservedState(instances=observed.instances), CONFIG) == []


@pytest.mark.parametrize(("server_id", "server_token", "fields"), [
    ("id-2", "tok-1", ("instance_id",)),
    ("id-1", "tok-2", ("token",)),
    ("id-2", "tok-2", ("instance_id", "token")),
])
def test_other_id_or_token_at_the_server_is_instance_id_mismatch(
    server_id: str, server_token: str, fields: tuple[str, ...]
) -> None:
    user = uuid.uuid4()
    desired, observed = healthy(user)
    observed = ObservedState(
        instances={name(user): server(user, instance_id=server_id, token=server_token)},
        webhooks=observed.webhooks)
    items = diff(desired, observed, CONFIG)
    assert kinds(items) == ["instance_id_mismatch"] and items[0].fields == fields
    assert "tok-" not in str(items[0].as_json())


def test_completed_but_unrecorded_instance_is_instance_id_mismatch() -> None:
    user = uuid.uuid4()
    desired = DesiredState(profiles=frozenset({user}), creations={user: "completed"})
    observed = ObservedState(instances={name(user): server(user)},
                             webhooks={name(user): good_hook()})
    assert kinds(diff(desired, observed, CONFIG)) == ["instance_id_mismatch"]


def test_prefixed_instance_without_profile_or_row_is_orphan_instance() -> None:
    stranger = uuid.uuid4()
    items = diff(DesiredState(profiles=frozenset()),
                 ObservedState(instances={name(stranger): server(stranger),
                                          "evo-not-a-uuid": server(stranger)}), CONFIG)
    assert kinds(items) == ["orphan_instance", "orphan_instance"]
    by_name = {item.instance_name: item.user_id for item in items}
    assert by_name == {name(stranger): stranger, "evo-not-a-uuid": None}


def test_instances_of_another_prefix_are_not_ours() -> None:
    stranger = uuid.uuid4()
    other = InstanceInfo(f"crm-{stranger}", "x", "WHATSAPP-BAILEYS", None, None)
    assert diff(DesiredState(profiles=frozenset()),
                ObservedState(instances={other.instance_name: other}), CONFIG) == []


def test_row_without_profile_is_orphan_row_and_its_instance_is_not_counted_again() -> None:
    gone = uuid.uuid4()
    desired = DesiredState(profiles=frozenset(), instance_rows={gone: row(gone)},
                           deletions={gone: "pending"})
    items = diff(desired, ObservedState(instances={name(gone): server(gone)}), CONFIG)
    assert kinds(items) == ["orphan_row"]
    assert items[0].user_id == gone and "deletion pending" in items[0].detail


def test_orphan_row_with_a_custom_name_accounts_for_that_instance() -> None:
    gone = uuid.uuid4()
    custom = InstanceRow(gone, "evo-custom", "id", None, URL, tuple(WEBHOOK_EVENTS))
    desired = DesiredState(profiles=frozenset(), instance_rows={gone: custom})
    other = InstanceInfo("evo-custom", "id", "WHATSAPP-BAILEYS", None, None)
    items = diff(desired, ObservedState(instances={"evo-custom": other}), CONFIG)
    assert kinds(items) == ["orphan_row"]


def test_every_kind_at_once_with_exact_counts_and_stable_order() -> None:
    ok, unprov, missing, hook, mismatch, orphan_row_user, stranger = (
        uuid.uuid4() for _ in range(7))
    users = {ok, unprov, missing, hook, mismatch}
    desired = DesiredState(
        profiles=frozenset(users),
        creations={u: "completed" for u in (ok, missing, hook, mismatch)},
        instance_rows={u: row(u) for u in (ok, missing, hook, mismatch, orphan_row_user)},
    )
    observed = ObservedState(
        instances={name(ok): server(ok), name(hook): server(hook),
                   name(mismatch): server(mismatch, instance_id="id-9"),
                   name(stranger): server(stranger),
                   name(orphan_row_user): server(orphan_row_user)},
        webhooks={name(ok): good_hook(), name(hook): good_hook(enabled=False),
                  name(mismatch): good_hook()},
    )
    items = diff(desired, observed, CONFIG)
    report = ReconcileReport(items)
    assert report.counts == dict.fromkeys(DRIFT_KINDS, 1)
    assert list(report.as_json()) == ["counts", "drift", "applied"]
    assert diff(desired, observed, CONFIG) == items


def test_webhook_targets_are_the_checked_profiles_the_server_has() -> None:
    ok, pending, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    desired = DesiredState(profiles=frozenset({ok, pending}),
                           creations={ok: "completed", pending: "pending"},
                           instance_rows={ok: row(ok), gone: row(gone)})
    names = [name(ok), name(pending), name(gone)]
    assert webhook_targets(desired, names, CONFIG) == [name(ok)]


def test_user_of_accepts_only_the_canonical_name() -> None:
    user = uuid.uuid4()
    assert user_of("evo-", name(user)) == user
    assert user_of("evo-", f"evo-{str(user).upper()}") is None
    assert user_of("evo-", f"evo-{user.hex}") is None
    assert user_of("evo-", f"xx-{user}") is None


# --- patience: 429 and outages --------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def test_patience_waits_out_retry_after_then_succeeds() -> None:
    clock = _Clock()
    answers: list[object] = [RateLimitedError("slow down", operation="x", retry_after_s=3.0),
                             "ok"]

    async def request() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    patience = Patience(sleep=clock.sleep, clock=clock)
    assert asyncio.run(patience.call(request)) == "ok"
    assert clock.sleeps == [3.0] and patience.waits == 1


def test_patience_gives_up_on_an_outage_after_its_bound() -> None:
    clock = _Clock()
    calls = 0

    async def request() -> object:
        nonlocal calls
        calls += 1
        raise ServiceUnavailableError("down", operation="x", kind="connect")

    patience = Patience(max_wait_s=10.0, sleep=clock.sleep, clock=clock)
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(patience.call(request))
    assert 3 <= calls <= 10 and clock.now <= 10.0
    assert max(clock.sleeps) <= 5.0


def test_an_instance_on_another_server_than_recorded_is_a_mismatch_never_missing() -> None:
    user = uuid.uuid4()
    desired = DesiredState(profiles=frozenset({user}), creations={user: "completed"},
                           instance_rows={user: replace(row(user), server="a")})
    observed = ObservedState(instances={name(user): server(user)},
                             found_on={name(user): "b"})
    [item] = diff(desired, observed, CONFIG)
    assert item.kind == "instance_id_mismatch" and item.fields == ("server",)
    assert item.server == "b" and "recorded on server a, found on b" in item.detail
    # Found where recorded: nothing.
    same = ObservedState(instances={name(user): server(user)}, found_on={name(user): "a"},
                         webhooks={name(user): None})
    assert kinds(diff(desired, same, CONFIG)) == ["webhook_drift"]


def test_a_server_not_observed_this_round_makes_its_rows_neither_missing_nor_orphaned() -> None:
    user = uuid.uuid4()
    desired = DesiredState(profiles=frozenset({user}), creations={user: "completed"},
                           instance_rows={user: replace(row(user), server="a")})
    assert kinds(diff(desired, ObservedState(instances={}), CONFIG)) == ["missing_instance"]
    assert diff(desired, ObservedState(instances={}, unobserved=frozenset({"a"})), CONFIG) == []
