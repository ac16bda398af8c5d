"""Typed values the client sends and returns, parsed from Evolution API v2.3.6 bodies.

Secrets (instance tokens, webhook header values such as `Authorization`) are kept out of
every `repr`, so a value logged by mistake does not leak them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALL_WEBHOOK_EVENTS",
    "CreatedInstance",
    "InstanceInfo",
    "ServerInfo",
    "WebhookSpec",
    "WebhookState",
]

# The 31 names POST /webhook/set accepts (EventController.events, v2.3.6), in server order.
# `events: []` means all of them; the server then stores this full list.
ALL_WEBHOOK_EVENTS: tuple[str, ...] = (
    "APPLICATION_STARTUP",
    "QRCODE_UPDATED",
    "MESSAGES_SET",
    "MESSAGES_UPSERT",
    "MESSAGES_EDITED",
    "MESSAGES_UPDATE",
    "MESSAGES_DELETE",
    "SEND_MESSAGE",
    "SEND_MESSAGE_UPDATE",
    "CONTACTS_SET",
    "CONTACTS_UPSERT",
    "CONTACTS_UPDATE",
    "PRESENCE_UPDATE",
    "CHATS_SET",
    "CHATS_UPSERT",
    "CHATS_UPDATE",
    "CHATS_DELETE",
    "GROUPS_UPSERT",
    "GROUP_UPDATE",
    "GROUP_PARTICIPANTS_UPDATE",
    "CONNECTION_UPDATE",
    "LABELS_EDIT",
    "LABELS_ASSOCIATION",
    "CALL",
    "TYPEBOT_START",
    "TYPEBOT_CHANGE_STATUS",
    "REMOVE_INSTANCE",
    "LOGOUT_INSTANCE",
    "INSTANCE_CREATE",
    "INSTANCE_DELETE",
    "STATUS_INSTANCE",
)
_EVENT_SET = frozenset(ALL_WEBHOOK_EVENTS)
_HTTP_URL = re.compile(r"^https?://", re.IGNORECASE)


@dataclass(frozen=True)
class WebhookSpec:
    """The webhook an instance must have. Validated here because create does not validate.

    (At creation the server stores unknown event names silently; only /webhook/set checks.)
    """

    url: str
    events: tuple[str, ...]
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    by_events: bool = False
    base64: bool = False
    # body_json() results: the spec is frozen, so its JSON is encoded once per service,
    # not once per request (two requests per provisioned user carry it).
    _json: dict[bool, str] = field(default_factory=dict, init=False, repr=False,
                                   compare=False, hash=False)

    def __post_init__(self) -> None:
        if not _HTTP_URL.match(self.url) or len(self.url) > 500:
            raise ValueError("webhook url must start with http:// or https:// (max 500 chars)")
        unknown = [e for e in self.events if e not in _EVENT_SET]
        if unknown:
            raise ValueError(f"unknown webhook event names: {', '.join(unknown)}")
        if isinstance(self.events, list):  # tolerate a list; keep the value hashable
            object.__setattr__(self, "events", tuple(self.events))
        for key, value in self.headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError("webhook headers must map strings to strings")

    def effective_events(self) -> frozenset[str]:
        """The events the server will store: `[]` means all 31."""
        return frozenset(self.events) if self.events else _EVENT_SET

    def body(self, *, include_empty_headers: bool) -> dict[str, Any]:
        """The `webhook` object of a request body (always `enabled: true`)."""
        payload: dict[str, Any] = {
            "enabled": True,
            "url": self.url,
            "events": list(self.events),
            "byEvents": self.by_events,
            "base64": self.base64,
        }
        if self.headers or include_empty_headers:
            payload["headers"] = dict(self.headers)
        return payload

    def body_json(self, *, include_empty_headers: bool) -> str:
        """`body()` as compact JSON (the client's encoding), computed once per spec."""
        cached = self._json.get(include_empty_headers)
        if cached is None:
            cached = json.dumps(self.body(include_empty_headers=include_empty_headers),
                                separators=(",", ":"), ensure_ascii=False)
            self._json[include_empty_headers] = cached
        return cached


@dataclass(frozen=True)
class CreatedInstance:
    """The 201 answer of POST /instance/create. `token` is the instance's own API key (`hash`)."""

    instance_name: str
    instance_id: str
    integration: str
    token: str = field(repr=False)
    status: str


@dataclass(frozen=True)
class InstanceInfo:
    """One row of GET /instance/fetchInstances (the DB row; no webhook in it)."""

    instance_name: str
    instance_id: str
    integration: str
    token: str | None = field(repr=False)
    connection_status: str | None


@dataclass(frozen=True)
class WebhookState:
    """The stored webhook row (GET /webhook/find, POST /webhook/set)."""

    url: str
    enabled: bool
    events: tuple[str, ...]
    headers: Mapping[str, str] = field(repr=False)
    by_events: bool
    base64: bool

    def matches(self, spec: WebhookSpec) -> bool:
        """True when this stored webhook already delivers what `spec` asks for.

        Extra stored headers are tolerated (the spec's headers must be present and equal).
        """
        if self.url != spec.url or not self.enabled:
            return False
        if frozenset(self.events) != spec.effective_events():
            return False
        if self.by_events != spec.by_events or self.base64 != spec.base64:
            return False
        return all(self.headers.get(key) == value for key, value in spec.headers.items())


@dataclass(frozen=True)
class ServerInfo:
    """GET / : the welcome message and, when given, the server version (e.g. '2.3.6')."""

    version: str | None
    message: str
