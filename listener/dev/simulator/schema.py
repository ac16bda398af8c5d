"""The request validation of Evolution API v2.3.6, reproduced with its exact error texts.

The real server validates with the `jsonschema` npm library and turns each error's `stack`
into a message with `stack.replace('instance.', '')` (or the failing subschema's
`description`). Clients see those texts inside a 400 `[[...]]`, so the simulator produces
the same texts in the same order: the schema's keys in their declared order, properties in
their declared order. Only the keywords the two schemas use are implemented.

Also here: the JavaScript renderings the server's messages contain (`String(x)` of a
value, `JSON.parse` error texts).
"""

from __future__ import annotations

import json
import re
from typing import Any

from listener.evolution.models import ALL_WEBHOOK_EVENTS

__all__ = [
    "CREATE_FLAT_EVENTS",
    "INSTANCE_SCHEMA",
    "WEBHOOK_EVENTS",
    "WEBHOOK_SCHEMA",
    "js_json_error",
    "js_string",
    "validate",
]

# EventController.events: what POST /webhook/set accepts, and what `events: []` expands to.
# One list for the client and the simulator; the contract replay (whose recorded error
# messages spell the enum out) checks it against the real server.
WEBHOOK_EVENTS: tuple[str, ...] = ALL_WEBHOOK_EVENTS
# The flat (ignored) `webhookEvents`/`rabbitmqEvents`/... fields of create use 26 names.
CREATE_FLAT_EVENTS: tuple[str, ...] = WEBHOOK_EVENTS[:26]
INTEGRATIONS: tuple[str, ...] = ("WHATSAPP-BUSINESS", "WHATSAPP-BAILEYS", "EVOLUTION")


def _is_not_empty(*names: str) -> dict[str, Any]:
    """The server's `isNotEmpty` helper: minLength 1, but only if these are the only keys."""
    return {
        "if": {"propertyNames": {"enum": list(names)}},
        "then": {
            "properties": {
                name: {"minLength": 1, "description": f'The "{name}" cannot be empty'}
                for name in names
            }
        },
    }


def _events_array(names: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "array", "minItems": 0, "items": {"type": "string", "enum": list(names)}}


_B: dict[str, Any] = {"type": "boolean"}
_S: dict[str, Any] = {"type": "string"}

# src/validate/instance.schema.ts (note the capital-I `Integration`: the real `integration`
# field is not schema-validated, only checked by the controller).
INSTANCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "instanceName": _S,
        "token": _S,
        "number": {"type": "string", "pattern": "^\\d+[\\.@\\w-]+"},
        "businessId": _S,
        "qrcode": _B,
        "Integration": {"type": "string", "enum": list(INTEGRATIONS)},
        "rejectCall": _B,
        "msgCall": _S,
        "groupsIgnore": _B,
        "alwaysOnline": _B,
        "readMessages": _B,
        "readStatus": _B,
        "syncFullHistory": _B,
        "wavoipToken": _S,
        "proxyHost": _S,
        "proxyPort": _S,
        "proxyProtocol": _S,
        "proxyUsername": _S,
        "proxyPassword": _S,
        "webhookUrl": _S,
        "webhookByEvents": _B,
        "webhookBase64": _B,
        "webhookEvents": _events_array(CREATE_FLAT_EVENTS),
        "rabbitmqEnabled": _B,
        "rabbitmqEvents": _events_array(CREATE_FLAT_EVENTS),
        "natsEnabled": _B,
        "natsEvents": _events_array(CREATE_FLAT_EVENTS),
        "sqsEnabled": _B,
        "sqsEvents": _events_array(CREATE_FLAT_EVENTS),
        "chatwootAccountId": _S,
        "chatwootToken": _S,
        "chatwootUrl": _S,
        "chatwootSignMsg": _B,
        "chatwootReopenConversation": _B,
        "chatwootConversationPending": _B,
        "chatwootImportContacts": _B,
        "chatwootNameInbox": _S,
        "chatwootMergeBrazilContacts": _B,
        "chatwootImportMessages": _B,
        "chatwootDaysLimitImportMessages": {"type": "number"},
    },
    **_is_not_empty("instanceName"),
}

# src/api/integrations/event/webhook/webhook.schema.ts
WEBHOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "webhook": {
            "type": "object",
            "properties": {
                "enabled": _B,
                "url": _S,
                "headers": {"type": "object"},
                "byEvents": _B,
                "base64": _B,
                "events": _events_array(WEBHOOK_EVENTS),
            },
            "required": ["enabled", "url"],
            **_is_not_empty("enabled", "url"),
        }
    },
    "required": ["webhook"],
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "null":
        return value is None
    return True


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    """The messages the server would put in its 400 `[[...]]`, in its order; [] when valid."""
    errors: list[str] = []
    _validate(instance, schema, "instance", errors)
    return errors


def _error(errors: list[str], schema: dict[str, Any], path: str, text: str) -> None:
    description = schema.get("description")
    if isinstance(description, str):
        errors.append(description)
    else:
        errors.append(f"{path} {text}".replace("instance.", "", 1))


def _validate(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    for keyword, arg in schema.items():
        if keyword == "type":
            if not _type_ok(value, arg):
                _error(errors, schema, path, f"is not of a type(s) {arg}")
        elif keyword == "properties" and isinstance(value, dict):
            for name, sub in arg.items():
                if name in value:
                    _validate(value[name], sub, f"{path}.{name}", errors)
        elif keyword == "required" and isinstance(value, dict):
            for name in arg:
                if name not in value:
                    _error(errors, schema, path, f'requires property "{name}"')
        elif keyword == "enum":
            # Both schemas' enums hold strings only, so this is the library's deep equality.
            if not (isinstance(value, str) and value in arg):
                _error(errors, schema, path, f"is not one of enum values: {','.join(arg)}")
        elif keyword == "pattern" and isinstance(value, str):
            if not re.search(arg, value):
                _error(errors, schema, path, f"does not match pattern {json.dumps(arg)}")
        elif (keyword == "minLength" and isinstance(value, str)) or (
            keyword == "minItems" and isinstance(value, list)
        ):
            if len(value) < arg:
                _error(errors, schema, path, f"does not meet minimum length of {arg}")
        elif keyword == "items" and isinstance(value, list):
            for index, item in enumerate(value):
                _validate(item, arg, f"{path}[{index}]", errors)
        elif keyword == "if" and isinstance(value, dict):
            names = arg.get("propertyNames", {}).get("enum", [])
            if all(key in names for key in value) and "then" in schema:
                _validate(value, schema["then"], path, errors)


def js_string(value: Any) -> str:
    """JavaScript's `String(value)` / template-literal rendering of a JSON value."""
    if value is None:
        return "null"  # callers render a *missing* property as "undefined" themselves
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


def js_json_error(text: str) -> str:
    """The message V8's `JSON.parse` gives for a malformed body (Node 20 wording)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        pos, msg = error.pos, error.msg
    else:  # valid JSON that body-parser's strict mode refuses (not an object or array)
        snippet = text.strip()[:10]
        return f"Unexpected token '{snippet[:1]}', \"{snippet}\" is not valid JSON"
    if msg.startswith("Expecting property name"):
        return f"Expected property name or '}}' in JSON at position {pos}"
    if msg.startswith("Expecting ':'"):
        return f"Expected ':' after property name in JSON at position {pos}"
    if msg.startswith("Expecting ','"):
        return f"Expected ',' or '}}' after property value in JSON at position {pos}"
    if msg.startswith("Unterminated string"):
        return f"Unterminated string in JSON at position {pos}"
    if msg.startswith("Extra data"):
        return f"Unexpected non-whitespace character after JSON at position {pos}"
    if pos >= len(text.rstrip()):
        return "Unexpected end of JSON input"
    quoted = f'"{text}"' if len(text) <= 30 else f'"{text[:30]}"...'
    return f"Unexpected token '{text[pos]}', {quoted} is not valid JSON"
