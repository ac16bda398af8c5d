"""What Evolution API v2.3.6 answers, route by route, for the calls the listener uses.

Each method mirrors the real middleware chain (`instanceExistsGuard` → `instanceLoggedGuard`
→ `authGuard.apikey` → JSON-schema validation → controller), because the order is visible
to clients: an unknown instance is 404 and a taken name is 403 *before* the key is checked.
Sources and observations are in `evolution-api.md`; comments name the quirk reproduced.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from listener.dev.simulator.options import SimulatorOptions
from listener.dev.simulator.schema import (
    INSTANCE_SCHEMA,
    WEBHOOK_EVENTS,
    WEBHOOK_SCHEMA,
    js_string,
    validate,
)
from listener.dev.simulator.state import IdFactory, SimInstance, SimWebhook, Store, iso_now

__all__ = ["Call", "EvolutionBehaviour", "Reply", "envelope"]

BAILEYS = "WHATSAPP-BAILEYS"
BUSINESS = "WHATSAPP-BUSINESS"
EVOLUTION = "EVOLUTION"
_INTEGRATIONS = (BAILEYS, BUSINESS, EVOLUTION)
_MISSING = object()
_LENGTH_OF_UNDEFINED = "Cannot read properties of undefined (reading 'length')"


@dataclass
class Reply:
    """A JSON answer: status and the value to serialise (`None` serialises to `null`)."""

    status: int
    payload: Any


@dataclass
class Call:
    """One parsed API request, as the behaviour needs it."""

    method: str
    operation: str
    name: str | None  # the `:instanceName` path parameter, when the route has one
    query: Mapping[str, str]
    body: Any  # parsed JSON, or {} when there was no JSON body (like express.json)
    key: str | None  # the `apikey` header


def envelope(status: int, message: Any) -> Reply:
    """The shared error shape `{"status", "error": <reason phrase>, "response": {"message"}}`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return Reply(status, {"status": status, "error": phrase, "response": {"message": message}})


def _unauthorized() -> Reply:
    return envelope(401, "Unauthorized")  # a string here, unlike almost every other error


def _not_found(name: str) -> Reply:
    return envelope(404, [f'The "{name}" instance does not exist'])


def _truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value (`[]` and `{}` are truthy; a missing key is not)."""
    if value is _MISSING or value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str):
        return value != ""
    return True


_PRISMA_TYPES = {bool: "Boolean", int: "Int", float: "Float", dict: "Object", list: "List"}


def _prisma_url_error(instance_id: str, value: Any) -> str:
    """The multi-line Prisma text the server returns when the webhook `url` is unusable."""
    if value is _MISSING:
        tail = "Argument `url` is missing."
    elif value is None:
        tail = "Argument `url` must not be null."
    else:
        provided = _PRISMA_TYPES.get(type(value), type(value).__name__)
        tail = f"Argument `url`: Invalid value provided. Expected String, provided {provided}."
    return (
        "\nInvalid `this.prisma.webhook.upsert()` invocation in\n"
        "<server-dir>/src/api/integrations/event/webhook/webhook.controller.ts:33:32\n\n"
        "  30   }\n  31 }\n  32 \n→ 33 return this.prisma.webhook.upsert({\n"
        f'       where: {{\n         instanceId: "{instance_id}"\n       }},\n'
        "       ...\n     })\n\n" + tail
    )


class EvolutionBehaviour:
    """The Evolution API semantics over a `Store`. Async only where the real server waits."""

    def __init__(self, store: Store, options: SimulatorOptions, ids: IdFactory) -> None:
        self.store = store
        self.options = options
        self.ids = ids
        self.server_url = "http://127.0.0.1"
        # The server side of an instance's life (timers, deliveries) lives in the HTTP
        # server; these hooks tell it. Without them a delete just waits `delete_delay_s`.
        self.on_created: Callable[[SimInstance], None] | None = None
        self.on_delete: Callable[[SimInstance], None] | None = None

    # -- auth ------------------------------------------------------------------------------

    def key_kind(self, key: str | None) -> str:
        if key is None:
            return "none"
        if key == self.options.api_key:
            return "global"
        if self.store.is_token(key):
            return "instance"
        return "wrong"

    def _is_global(self, key: str | None) -> bool:
        return key is not None and not self.options.wrong_key and key == self.options.api_key

    def _may_use(self, key: str | None, instance: SimInstance) -> bool:
        """Global key, or this instance's own token (only on its own `:instanceName` routes)."""
        if key is None or self.options.wrong_key:
            return False
        return key == self.options.api_key or key == instance.token

    def _guarded(self, call: Call) -> SimInstance | Reply:
        """instanceExistsGuard then authGuard for a route with `:instanceName`."""
        assert call.name is not None
        instance = self.store.get(call.name)
        if instance is None:
            return _not_found(call.name)
        if not self._may_use(call.key, instance):
            return _unauthorized()
        return instance

    # -- routes ----------------------------------------------------------------------------

    async def dispatch(self, call: Call) -> Reply:
        handler = _ROUTES[call.operation]
        return await handler(self, call)

    async def root(self, call: Call) -> Reply:
        return Reply(
            200,
            {
                "status": 200,
                "message": "Welcome to the Evolution API, it is working!",
                "version": self.options.version,
                "clientName": self.options.client_name,
                "manager": f"{self.options.server_url or self.server_url}/manager",
                "documentation": "https://doc.evolution-api.com",
                "whatsappWebVersion": "2.3000.1027934701",
            },
        )

    async def verify_creds(self, call: Call) -> Reply:
        if not self._is_global(call.key):
            return _unauthorized()
        return Reply(200, {"status": 200, "message": "Credentials are valid"})

    async def create_instance(self, call: Call) -> Reply:
        data: dict[str, Any] = call.body if isinstance(call.body, dict) else {}
        raw_name = data.get("instanceName", _MISSING)
        # instanceLoggedGuard: a missing name matches every row (Prisma `name: undefined`).
        if raw_name is _MISSING:
            taken = self.store.any_exists()
            shown = "undefined"
        else:
            shown = js_string(raw_name)
            taken = self.store.get(shown) is not None
        if taken:
            return envelope(403, [f'This name "{shown}" is already in use.'])
        if not self._is_global(call.key):
            return _unauthorized()  # instance tokens are not accepted on create
        errors = validate(call.body, INSTANCE_SCHEMA)
        if errors:
            return envelope(400, [errors])
        return await self._create_controller(data, shown)

    async def _create_controller(self, data: dict[str, Any], name: str) -> Reply:
        integration = data.get("integration")
        if integration not in _INTEGRATIONS:
            return envelope(400, ["Invalid integration"])
        if integration == BUSINESS and not _truthy(data.get("token", _MISSING)):
            return envelope(400, ["token is required"])
        token = data["token"] if _truthy(data.get("token", _MISSING)) else self.ids.token()
        number = data.get("number") if isinstance(data.get("number"), str) else None
        instance = SimInstance(
            name=name,
            instance_id=self.ids.uuid4(),
            integration=str(integration),
            token=js_string(token),
            state="close" if integration == BAILEYS else "open",
            settings=_settings(data),
            setting_id=self.ids.cuid(),
            number=number or None,
            business_id=data.get("businessId") if isinstance(data.get("businessId"), str) else None,
            owner_jid=data.get("ownerJid"),
            profile_name=data.get("profileName"),
            profile_pic_url=data.get("profilePicUrl"),
        )
        self.store.add(instance)
        # From here on, any failure rolls the instance back and answers 400 [first message].
        failure = self._create_webhook(instance, data.get("webhook", _MISSING))
        if failure is None and all(
            _truthy(data.get(k, _MISSING)) for k in ("proxyHost", "proxyPort", "proxyProtocol")
        ):
            failure = "Invalid proxy"  # the simulator cannot reach any proxy
        if failure is None and integration == BUSINESS and not _truthy(data.get("number")):
            failure = "number is required"
        if failure is None and all(
            _truthy(data.get(k, _MISSING))
            for k in ("chatwootAccountId", "chatwootToken", "chatwootUrl")
        ):
            failure = "Chatwoot is not enabled"
        if failure is not None:
            self.store.remove(instance.name)
            return envelope(400, [failure])
        status = instance.state
        qrcode: Any = _MISSING
        if _truthy(data.get("qrcode", _MISSING)) and integration == BAILEYS:
            if self.options.qrcode_delay_s > 0:
                await asyncio.sleep(self.options.qrcode_delay_s)  # the real fixed 5 s sleep
            instance.state = "connecting"
            qrcode = {"count": 0}  # offline answer: no QR produced yet
        result: dict[str, Any] = {
            "instance": {
                "instanceName": instance.name,
                "instanceId": instance.instance_id,
                "integration": integration,
                "webhookWaBusiness": (
                    f"{self.options.server_url or self.server_url}/webhook/meta"
                    if integration == BUSINESS
                    else None
                ),
                "accessTokenWaBusiness": "",
                "status": status,
            },
            "hash": instance.token,
            "webhook": _webhook_echo(data.get("webhook")),
            "websocket": _enabled_echo(data.get("websocket")),
            "rabbitmq": _enabled_echo(data.get("rabbitmq")),
            "nats": _enabled_echo(data.get("nats")),
            "sqs": _enabled_echo(data.get("sqs")),
            "settings": dict(instance.settings),
        }
        if qrcode is not _MISSING:
            result["qrcode"] = qrcode
        if self.on_created is not None:
            self.on_created(instance)  # DEL_INSTANCE's timer starts here (createInstance)
        return Reply(201, result)

    def _create_webhook(self, instance: SimInstance, webhook: Any) -> str | None:
        """eventManager.setInstance at create: `enabled` forced true, names not validated."""
        if not _truthy(webhook):
            return None
        events = webhook.get("events", _MISSING) if isinstance(webhook, dict) else _MISSING
        if events is _MISSING:
            return _LENGTH_OF_UNDEFINED
        if events is None:
            return "Cannot read properties of null (reading 'length')"
        if isinstance(events, list | str) and len(events) == 0:
            events = list(WEBHOOK_EVENTS)
        assert isinstance(webhook, dict)
        url = webhook.get("url", _MISSING)
        if not isinstance(url, str):
            return _prisma_url_error(instance.instance_id, url)
        self.store.webhooks[instance.name] = SimWebhook(
            id=self.ids.cuid(),
            instance_id=instance.instance_id,
            url=url,
            enabled=True,
            events=events,
            headers=webhook.get("headers"),
            by_events=webhook.get("byEvents", False),
            base64=webhook.get("base64", False),
        )
        return None

    async def fetch_instances(self, call: Call) -> Reply:
        # No instanceExistsGuard on this route; auth first.
        key = call.key
        name = call.query.get("instanceName") or ""
        instance_id = call.query.get("instanceId") or ""
        number = call.query.get("number") or ""
        client = self.options.client_name
        if not self._is_global(key):
            if key is None or self.options.wrong_key or not self.store.is_token(key):
                return _unauthorized()
            names = [
                n
                for n in self.store.names_for_token(key)
                if (not name or n == name)
                and (not instance_id or self.store.instances[n].instance_id == instance_id)
            ]
            if not names:
                return _unauthorized()
            return Reply(200, [self.store.instances[n].row(client) for n in names])
        if instance_id or number:
            found = (
                self.store.name_for_id(instance_id)
                if instance_id
                else self.store.name_for_number(number)
            )
            if found is None:
                return envelope(404, [f'Instance "{instance_id or number}" not found'])
            name = found
        if name:
            instance = self.store.get(name)
            if instance is None:
                return envelope(404, [f'Instance "{name}" not found'])
            return Reply(200, [instance.row(client)])
        return Reply(200, [instance.row(client) for instance in self.store.all()])

    async def connection_state(self, call: Call) -> Reply:
        found = self._guarded(call)
        if isinstance(found, Reply):
            return found
        return Reply(200, {"instance": {"instanceName": found.name, "state": found.state}})

    async def connect(self, call: Call) -> Reply:
        found = self._guarded(call)
        if isinstance(found, Reply):
            return found
        if found.state == "open":
            return Reply(200, {"instance": {"instanceName": found.name, "state": found.state}})
        if found.state == "close":
            if self.options.connect_delay_s > 0:
                await asyncio.sleep(self.options.connect_delay_s)  # the real fixed 2 s wait
            found.state = "connecting"
        return Reply(200, {"count": 0})

    async def logout(self, call: Call) -> Reply:
        found = self._guarded(call)
        if isinstance(found, Reply):
            return found
        if found.state == "close":
            return envelope(400, [f'The "{found.name}" instance is not connected'])
        found.state = "close"
        return Reply(
            200,
            {"status": "SUCCESS", "error": False, "response": {"message": "Instance logged out"}},
        )

    async def delete_instance(self, call: Call) -> Reply:
        found = self._guarded(call)
        if isinstance(found, Reply):
            return found
        found.state = "close"  # it logs out first when connecting or open
        # The 200 comes at once; the name stays "in use" until the cleanup finishes.
        if self.on_delete is not None:
            self.on_delete(found)
        else:
            self.store.schedule_delete(found.name, self.options.delete_delay_s)
        return Reply(
            200, {"status": "SUCCESS", "error": False, "response": {"message": "Instance deleted"}}
        )

    async def restart(self, call: Call) -> Reply:
        found = self._guarded(call)
        if isinstance(found, Reply):
            return found
        if found.state == "open":
            return Reply(200, {"instance": {"instanceName": found.name, "state": found.state}})
        # A BadRequestException caught and rendered with toString(): the real quirk.
        return Reply(200, {"error": True, "message": "[object Object]"})

    async def set_webhook(self, call: Call) -> Reply:
        found = self._guarded(call)
        if isinstance(found, Reply):
            return found
        errors = validate(call.body, WEBHOOK_SCHEMA)
        if errors:
            return envelope(400, [errors])
        spec: dict[str, Any] = call.body["webhook"]
        if not _truthy(spec.get("enabled")):
            events: Any = []
        else:
            events = spec.get("events", _MISSING)
            if events is _MISSING:  # an unhandled TypeError: 500 with a string message
                return envelope(500, _LENGTH_OF_UNDEFINED)
            if len(events) == 0:
                events = list(WEBHOOK_EVENTS)
        now = iso_now()
        row = self.store.webhooks.get(found.name)
        if row is None:
            row = SimWebhook(
                id=self.ids.cuid(),
                instance_id=found.instance_id,
                url=spec["url"],
                enabled=spec["enabled"],
                events=events,
                created_at=now,
            )
            self.store.webhooks[found.name] = row
        # An upsert: keys left out keep their stored value (Prisma ignores `undefined`).
        row.url = spec["url"]
        row.enabled = spec["enabled"]
        row.events = events
        if "headers" in spec:
            row.headers = spec["headers"]
        if "byEvents" in spec:
            row.by_events = spec["byEvents"]
        if "base64" in spec:
            row.base64 = spec["base64"]
        row.updated_at = now
        return Reply(201, row.row())

    async def find_webhook(self, call: Call) -> Reply:
        found = self._guarded(call)
        if isinstance(found, Reply):
            return found
        row = self.store.webhooks.get(found.name)
        return Reply(200, None if row is None else row.row())


def _settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the controller derives from the create body (`=== true`, `|| ''`)."""

    def text(key: str) -> Any:
        value = data.get(key, _MISSING)
        return value if _truthy(value) else ""

    return {
        "rejectCall": data.get("rejectCall") is True,
        "msgCall": text("msgCall"),
        "groupsIgnore": data.get("groupsIgnore") is True,
        "alwaysOnline": data.get("alwaysOnline") is True,
        "readMessages": data.get("readMessages") is True,
        "readStatus": data.get("readStatus") is True,
        "syncFullHistory": data.get("syncFullHistory") is True,
        "wavoipToken": text("wavoipToken"),
    }


def _webhook_echo(webhook: Any) -> dict[str, Any]:
    """`webhook` of the create answer: only the keys that were sent (undefined is dropped)."""
    if not isinstance(webhook, dict):
        return {}
    pairs = (
        ("webhookUrl", "url"),
        ("webhookHeaders", "headers"),
        ("webhookByEvents", "byEvents"),
        ("webhookBase64", "base64"),
    )
    return {out: webhook[key] for out, key in pairs if key in webhook}


def _enabled_echo(value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and "enabled" in value:
        return {"enabled": value["enabled"]}
    return {}


_ROUTES = {
    "root": EvolutionBehaviour.root,
    "verify_creds": EvolutionBehaviour.verify_creds,
    "create_instance": EvolutionBehaviour.create_instance,
    "fetch_instances": EvolutionBehaviour.fetch_instances,
    "connection_state": EvolutionBehaviour.connection_state,
    "connect": EvolutionBehaviour.connect,
    "logout": EvolutionBehaviour.logout,
    "delete_instance": EvolutionBehaviour.delete_instance,
    "restart": EvolutionBehaviour.restart,
    "set_webhook": EvolutionBehaviour.set_webhook,
    "find_webhook": EvolutionBehaviour.find_webhook,
}


def dumps(payload: Any) -> bytes:
    """Compact JSON like Express's `res.json` (non-ASCII kept as UTF-8)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
