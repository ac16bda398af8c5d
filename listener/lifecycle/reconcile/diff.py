"""The drift diff: (desired, observed, config) -> drift items. Pure, so every precedence
rule is a unit test, not an HTTP scenario.

Precedence (SPEC §9):
- a profile whose creation is pending/processing is on its way: nothing else is checked;
- a profile with neither a creation row nor an instance row is `unprovisioned_profile` and
  nothing else (the normal path will create or adopt its instance);
- a user being deleted (deletion pending/processing) is not `missing_instance`;
- an `evolution_instances` row without a profile is `orphan_row`; its instance, if the server
  has one, is counted there and not again as `orphan_instance`;
- `orphan_instance` is a prefixed instance that is neither a profile's nor recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from listener.evolution.models import WebhookSpec, WebhookState
from listener.lifecycle.reconcile.model import (
    IN_FLIGHT,
    INSTANCE_ID_MISMATCH,
    MISSING_INSTANCE,
    ORPHAN_INSTANCE,
    ORPHAN_ROW,
    UNPROVISIONED_PROFILE,
    WEBHOOK_DRIFT,
    DesiredState,
    DiffConfig,
    DriftItem,
    ObservedState,
)


def default_name(prefix: str, user_id: uuid.UUID) -> str:
    """The deterministic name (SPEC §2): prefix + lowercase UUID with dashes."""
    return f"{prefix}{str(user_id).lower()}"


def user_of(prefix: str, name: str) -> uuid.UUID | None:
    """The user a prefixed name belongs to, when its suffix is a UUID in canonical form."""
    if not name.startswith(prefix):
        return None
    try:
        user_id = uuid.UUID(name[len(prefix):])
    except ValueError:
        return None
    return user_id if default_name(prefix, user_id) == name else None


def webhook_differences(state: WebhookState | None, spec: WebhookSpec) -> list[str]:
    """Which fields of the stored webhook differ from the configured one (empty: none).

    Compared: URL, the events as a set, enabled, byEvents and base64, and every configured
    header (the Authorization header when WEBHOOK_AUTHORIZATION is set). Header names are
    compared case-insensitively, as HTTP does; extra stored headers are tolerated.
    """
    if state is None:
        return ["webhook"]
    fields: list[str] = []
    if state.url != spec.url:
        fields.append("url")
    if frozenset(state.events) != spec.effective_events():
        fields.append("events")
    if not state.enabled:
        fields.append("enabled")
    if state.by_events != spec.by_events:
        fields.append("byEvents")
    if state.base64 != spec.base64:
        fields.append("base64")
    stored = {key.lower(): value for key, value in state.headers.items()}
    for key, value in spec.headers.items():
        if stored.get(key.lower()) != value:
            fields.append(f"header:{key}")
    return fields


def _recorded_webhook_differences(
    url: str | None, events: Iterable[str] | None, spec: WebhookSpec
) -> list[str]:
    fields = []
    if url != spec.url:
        fields.append("recorded_url")
    if events is None or frozenset(events) != spec.effective_events():
        fields.append("recorded_events")
    return fields


def _checked_users(desired: DesiredState) -> list[uuid.UUID]:
    """Profiles whose instance is expected to exist now (nothing on its way, not deleted)."""
    users = []
    for user_id in sorted(desired.profiles):
        creation = desired.creations.get(user_id)
        row = desired.instance_rows.get(user_id)
        if creation is None and row is None:
            continue
        if creation in IN_FLIGHT or desired.deletions.get(user_id) in IN_FLIGHT:
            continue
        users.append(user_id)
    return users


def _name_of(desired: DesiredState, config: DiffConfig, user_id: uuid.UUID) -> str:
    row = desired.instance_rows.get(user_id)
    return row.instance_name if row is not None else default_name(config.prefix, user_id)


def webhook_targets(
    desired: DesiredState, instance_names: Iterable[str], config: DiffConfig
) -> list[str]:
    """The instances whose webhook the diff will compare: those of checked profiles that the
    server has. (An orphan's webhook does not matter; reading it would cost a call each.)"""
    present = set(instance_names)
    names = (_name_of(desired, config, user) for user in _checked_users(desired))
    return [name for name in names if name in present]


def diff(desired: DesiredState, observed: ObservedState, config: DiffConfig) -> list[DriftItem]:
    """Every difference, profiles first (by user id), then orphan rows, then orphan
    instances (by name): a stable order, so two runs over the same state read the same."""
    items: list[DriftItem] = []
    accounted: set[str] = set()
    checked = set(_checked_users(desired))

    for user_id in sorted(desired.profiles):
        name = _name_of(desired, config, user_id)
        accounted.update({name, default_name(config.prefix, user_id)})
        row = desired.instance_rows.get(user_id)
        creation = desired.creations.get(user_id)
        if creation is None and row is None:
            items.append(DriftItem(UNPROVISIONED_PROFILE, name, user_id,
                                   "profile has neither a queue row nor an instance row"))
            continue
        if user_id not in checked:
            continue
        if row is not None and row.server in observed.unobserved:
            continue  # its server's list could not be read: nothing known this round
        server = observed.instances.get(name)
        found_on = observed.found_on.get(name)
        if server is not None and row is not None and found_on is not None \
                and found_on != row.server:
            # Never moved automatically: a connected session cannot change server.
            items.append(DriftItem(INSTANCE_ID_MISMATCH, name, user_id,
                                   f"recorded on server {row.server}, found on {found_on}",
                                   ("server",), server=found_on))
            continue
        if server is None:
            if row is not None or creation == "completed":
                what = "recorded" if row is not None else "completed"
                items.append(DriftItem(MISSING_INSTANCE, name, user_id,
                                       f"{what}, but the server has no such instance",
                                       server=None if row is None else row.server))
            continue
        mismatch: list[str] = []
        if row is None:
            mismatch = ["instance_id", "token"]
        else:
            if row.instance_id != server.instance_id:
                mismatch.append("instance_id")
            if server.token is not None and row.token != server.token:
                mismatch.append("token")
        if mismatch:
            detail = ("the server's instance is not recorded" if row is None
                      else f"the server's instance has another {' and '.join(mismatch)}")
            items.append(DriftItem(INSTANCE_ID_MISMATCH, name, user_id, detail,
                                   tuple(mismatch), server=found_on))
        if name in observed.webhooks:
            fields = webhook_differences(observed.webhooks[name], config.webhook)
            if row is not None:
                fields += _recorded_webhook_differences(row.webhook_url, row.webhook_events,
                                                        config.webhook)
            if fields:
                items.append(DriftItem(WEBHOOK_DRIFT, name, user_id,
                                       f"webhook differs: {', '.join(fields)}", tuple(fields),
                                       server=found_on))

    for user_id, row in sorted(desired.instance_rows.items()):
        if user_id in desired.profiles:
            continue
        accounted.add(row.instance_name)
        deletion = desired.deletions.get(user_id)
        at_server = "instance present" if row.instance_name in observed.instances \
            else "no instance at the server"
        queued = f"; deletion {deletion}" if deletion is not None else ""
        items.append(DriftItem(ORPHAN_ROW, row.instance_name, user_id,
                               f"instance row without a profile ({at_server}{queued})",
                               server=row.server))

    for name in sorted(observed.instances):
        if name in accounted or not name.startswith(config.prefix):
            continue
        owner = user_of(config.prefix, name)
        items.append(DriftItem(ORPHAN_INSTANCE, name, owner,
                               "prefixed instance with neither a profile nor an instance row",
                               server=observed.found_on.get(name)))
    return items
