"""Express-like routing of the simulator's API paths, and `express.json()` body parsing.

Why apart: the HTTP server, the control API and tests all need to know which operation a
path names, and this is pure (no state), so it is tested and read on its own.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from listener.dev.simulator.schema import js_json_error

__all__ = ["parse_body", "route"]

# Express routing: fixed segments match case-insensitively, one trailing slash is allowed.
_STATIC_ROUTES: dict[tuple[str, str], str] = {
    ("GET", ""): "root",
    ("POST", "verify-creds"): "verify_creds",
    ("POST", "instance/create"): "create_instance",
    ("GET", "instance/fetchinstances"): "fetch_instances",
}
_PARAM_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "instance/connectionstate"): "connection_state",
    ("GET", "instance/connect"): "connect",
    ("DELETE", "instance/logout"): "logout",
    ("DELETE", "instance/delete"): "delete_instance",
    ("POST", "instance/restart"): "restart",
    ("POST", "webhook/set"): "set_webhook",
    ("GET", "webhook/find"): "find_webhook",
}


def route(method: str, raw_path: str) -> tuple[str, str | None] | None:
    """(operation, decoded `:instanceName`) for a method and a raw (still %-encoded) path."""
    method = "GET" if method == "HEAD" else method
    segments = raw_path.split("/")[1:]
    if len(segments) > 1 and segments[-1] == "":
        segments = segments[:-1]
    if len(segments) == 3 and segments[2]:
        operation = _PARAM_ROUTES.get((method, f"{segments[0]}/{segments[1]}".lower()))
        if operation is not None:
            return operation, unquote(segments[2])
    operation = _STATIC_ROUTES.get((method, "/".join(segments).lower()))
    return (operation, None) if operation is not None else None



def parse_body(content_type: str, raw: bytes) -> tuple[Any, str | None]:
    """Like `express.json()`: only `application/json` is parsed; no body means `{}`."""
    if not raw or content_type != "application/json":
        return {}, None
    text = raw.decode("utf-8", errors="replace")
    stripped = text.lstrip(" \t\r\n")
    if not stripped or stripped[0] not in "{[":  # body-parser's strict mode
        return None, js_json_error(text)
    try:
        return json.loads(text), None
    except ValueError:
        return None, js_json_error(text)

