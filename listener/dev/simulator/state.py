"""The simulator's in-memory state: instances, webhooks, indexes, and the request log.

Every lookup the hot path makes is a dict access (by name, token, id or number); the only
scans are the ones the real API makes too (list all instances). A pending delete is kept
as a deadline and finished lazily when the name is next looked up, so no timer runs.
"""

from __future__ import annotations

import math
import random
import string
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IdFactory", "RequestRecord", "SimInstance", "SimWebhook", "Store", "iso_now"]

_CUID_ALPHABET = string.ascii_lowercase + string.digits


class _SecondPrefix:
    """The `2026-11-24T05:55:19.` part of the current second, rendered once per second:
    strftime per answer was a tenth of the simulator's own Python time in a drain."""

    second = -1
    text = ""


def iso_now() -> str:
    """Prisma's timestamp rendering: `2026-11-24T05:55:19.765Z`."""
    now = time.time()
    second = int(now)
    if second != _SecondPrefix.second:
        _SecondPrefix.text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _SecondPrefix.second = second
    return f"{_SecondPrefix.text}{int((now - second) * 1000):03d}Z"


class IdFactory:
    """Instance ids (UUIDv4), generated tokens (uppercase UUIDv4) and row ids (cuid-like).

    Seeded separately from the fault generator, so ids never shift which request faults.
    """

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(None if seed is None else seed ^ 0x5EED)

    def uuid4(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def token(self) -> str:
        return self.uuid4().upper()

    def cuid(self) -> str:
        return "c" + "".join(self._rng.choices(_CUID_ALPHABET, k=24))


@dataclass
class SimInstance:
    """One instance as the real server holds it (DB row + in-memory connection state)."""

    name: str
    instance_id: str
    integration: str
    token: str
    state: str  # close | connecting | open
    settings: dict[str, Any]
    setting_id: str
    number: str | None = None
    business_id: str | None = None
    owner_jid: Any = None
    profile_name: Any = None
    profile_pic_url: Any = None
    created_at: str = field(default_factory=iso_now)
    updated_at: str = ""
    delete_at: float | None = None  # monotonic deadline of a pending delete

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at

    @property
    def deleting(self) -> bool:
        return self.delete_at is not None

    def row(self, client_name: str) -> dict[str, Any]:
        """The GET /instance/fetchInstances row (Prisma `Instance` with its includes)."""
        return {
            "id": self.instance_id,
            "name": self.name,
            "connectionStatus": self.state,
            "ownerJid": self.owner_jid,
            "profileName": self.profile_name,
            "profilePicUrl": self.profile_pic_url,
            "integration": self.integration,
            "number": self.number,
            "businessId": self.business_id,
            "token": self.token,
            "clientName": client_name,
            "disconnectionReasonCode": None,
            "disconnectionObject": None,
            "disconnectionAt": None,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "Chatwoot": None,
            "Proxy": None,
            "Rabbitmq": None,
            "Nats": None,
            "Sqs": None,
            "Websocket": None,
            "Setting": {
                "id": self.setting_id,
                **self.settings,
                "createdAt": self.created_at,
                "updatedAt": self.created_at,
                "instanceId": self.instance_id,
            },
            "_count": {"Message": 0, "Contact": 0, "Chat": 0},
        }


@dataclass
class SimWebhook:
    """The Prisma `Webhook` row of one instance (one per instance: set is an upsert)."""

    id: str
    instance_id: str
    url: Any
    enabled: bool
    events: Any  # normally a list of names; create stores whatever it was given
    headers: Any = None
    by_events: Any = False
    base64: Any = False
    created_at: str = field(default_factory=iso_now)
    updated_at: str = ""

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "headers": self.headers,
            "enabled": self.enabled,
            "events": self.events,
            "webhookByEvents": self.by_events,
            "webhookBase64": self.base64,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "instanceId": self.instance_id,
        }


@dataclass
class RequestRecord:
    """One API request as the simulator saw and answered it.

    The `apikey`/`authorization` header values are replaced by `<redacted>` in `headers`;
    `key_kind` says what was sent (`none`, `global`, `instance` = some instance's token,
    `wrong`) and `has_valid_key` whether the server accepted it as a key at all.
    `outcome` is `answered`, `reset`, `hang`, `lost` (work done, answer dropped) or `huge`.
    """

    seq: int
    started_at: float
    method: str
    path: str
    raw_target: str
    query: dict[str, str]
    headers: dict[str, str]
    key_kind: str
    has_valid_key: bool
    body: Any
    body_size: int
    operation: str
    instance: str | None
    peer_port: int | None
    status: int | None = None
    outcome: str = "answered"
    fault: str | None = None
    duration_s: float = 0.0
    bytes_sent: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "started_at": self.started_at,
            "method": self.method,
            "path": self.path,
            "raw_target": self.raw_target,
            "query": self.query,
            "headers": self.headers,
            "key_kind": self.key_kind,
            "has_valid_key": self.has_valid_key,
            "body": self.body,
            "body_size": self.body_size,
            "operation": self.operation,
            "instance": self.instance,
            "peer_port": self.peer_port,
            "status": self.status,
            "outcome": self.outcome,
            "fault": self.fault,
            "duration_s": self.duration_s,
            "bytes_sent": self.bytes_sent,
        }


class Store:
    """Instances and webhooks by name, with the indexes the API's lookups need."""

    def __init__(self) -> None:
        self.instances: dict[str, SimInstance] = {}
        self.webhooks: dict[str, SimWebhook] = {}
        self._by_id: dict[str, str] = {}
        self._by_token: dict[str, set[str]] = {}
        self._by_number: dict[str, set[str]] = {}
        self.pending_deletes: set[str] = set()

    def clear(self) -> None:
        for mapping in (self.instances, self.webhooks, self._by_id, self._by_token):
            mapping.clear()
        self._by_number.clear()
        self.pending_deletes.clear()

    def add(self, instance: SimInstance) -> None:
        self.instances[instance.name] = instance
        self._by_id[instance.instance_id] = instance.name
        self._by_token.setdefault(instance.token, set()).add(instance.name)
        if instance.number:
            self._by_number.setdefault(instance.number, set()).add(instance.name)

    def remove(self, name: str) -> SimInstance | None:
        """Drop an instance and everything hanging off it (its webhook row: cascade)."""
        instance = self.instances.pop(name, None)
        self.webhooks.pop(name, None)
        self.pending_deletes.discard(name)
        if instance is None:
            return None
        self._by_id.pop(instance.instance_id, None)
        _discard(self._by_token, instance.token, name)
        if instance.number:
            _discard(self._by_number, instance.number, name)
        return instance

    def get(self, name: str) -> SimInstance | None:
        """The live instance of this name, finishing its pending delete if that is due."""
        instance = self.instances.get(name)
        if (
            instance is not None
            and instance.delete_at is not None
            and time.monotonic() >= instance.delete_at
        ):
            self.remove(name)
            return None
        return instance

    def any_exists(self) -> bool:
        self.finish_due_deletes()
        return bool(self.instances)

    def all(self) -> list[SimInstance]:
        self.finish_due_deletes()
        return list(self.instances.values())

    def name_for_id(self, instance_id: str) -> str | None:
        name = self._by_id.get(instance_id)
        return name if name is not None and self.get(name) is not None else None

    def name_for_number(self, number: str) -> str | None:
        for name in sorted(self._by_number.get(number, ())):
            if self.get(name) is not None:
                return name
        return None

    def names_for_token(self, token: str) -> list[str]:
        return [name for name in sorted(self._by_token.get(token, ())) if self.get(name)]

    def is_token(self, token: str) -> bool:
        return token in self._by_token

    def schedule_delete(self, name: str, delay_s: float, *, held: bool = False) -> None:
        """Start the asynchronous cleanup: the name stays in use for `delay_s`, or until
        `release_delete` when `held` (a REMOVE_INSTANCE delivery being retried)."""
        instance = self.instances.get(name)
        if instance is None:
            return
        if delay_s <= 0 and not held:
            self.remove(name)
            return
        if instance.delete_at is None:
            instance.delete_at = math.inf if held else time.monotonic() + delay_s
            self.pending_deletes.add(name)

    def release_delete(self, name: str, at: float) -> None:
        """A held delete may finish at monotonic time `at` (now or later)."""
        instance = self.instances.get(name)
        if instance is not None and instance.delete_at is not None:
            instance.delete_at = at

    def finish_due_deletes(self) -> None:
        if not self.pending_deletes:
            return
        now = time.monotonic()
        for name in list(self.pending_deletes):
            instance = self.instances.get(name)
            if instance is None or (instance.delete_at is not None and now >= instance.delete_at):
                self.remove(name)

    def complete_deletes(self, names: tuple[str, ...] = ()) -> list[str]:
        """Finish pending deletes now (all of them when `names` is empty)."""
        targets = [n for n in (names or tuple(self.pending_deletes)) if n in self.pending_deletes]
        for name in targets:
            self.remove(name)
        return sorted(targets)

    def cancel_deletes(self) -> list[str]:
        """A restart loses pending deletes: the instances are back (observed on v2.3.6)."""
        names = sorted(self.pending_deletes)
        for name in names:
            instance = self.instances.get(name)
            if instance is not None:
                instance.delete_at = None
        self.pending_deletes.clear()
        return names


def _discard(index: dict[str, set[str]], key: str, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]


class RequestLog:
    """A bounded ring of `RequestRecord`s plus a total counter (seq keeps growing)."""

    def __init__(self, limit: int) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=limit if limit > 0 else 0)
        self.total = 0

    def next_seq(self) -> int:
        self.total += 1
        return self.total

    def append(self, record: RequestRecord) -> None:
        self.records.append(record)

    def since(self, seq: int, limit: int) -> list[RequestRecord]:
        out: list[RequestRecord] = []
        for record in reversed(self.records):
            if record.seq <= seq:
                break
            out.append(record)
        out.reverse()
        return out[:limit]
