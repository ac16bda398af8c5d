"""How the simulator answers: JSON with the real server's content type, raw bodies, proxy
error pages, TCP resets and huge streamed bodies; each also fills in the request record.

Why apart: the fault pipeline (`server.py`) decides *whether* to misbehave; these say *how*,
and are the same for scripted faults, drawn faults and outages.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from listener.dev.simulator.behaviour import Reply, dumps
from listener.dev.simulator.options import ScriptedFault
from listener.dev.simulator.state import RequestRecord

__all__ = [
    "JSON_TYPE",
    "default_message",
    "huge",
    "json_answer",
    "peer_port",
    "proxy_page",
    "raw",
    "reset",
    "retry_after_header",
]

JSON_TYPE = "application/json; charset=utf-8"


def proxy_page(status: int) -> str:
    """An nginx-style error page, what a reverse proxy answers when the API is down."""
    phrases = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
    title = f"{status} {phrases.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


def default_message(status: int) -> Any:
    """Message shapes like the real server: string for 401/5xx, array for other 4xx."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status == 401 or status >= 500:
        return phrase if status == 401 else f"simulated {status} {phrase}"
    return [f"simulated {status} {phrase}"]


def retry_after_header(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


def peer_port(request: web.BaseRequest) -> int | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
        return peer[1]
    return None


async def huge(
    fault: ScriptedFault, request: web.Request, record: RequestRecord | None
) -> web.StreamResponse:
    """Stream `size_bytes` of filler; stop as soon as the client goes away."""
    status = fault.status or 200
    response = web.StreamResponse(status=status, headers={"Content-Type": JSON_TYPE})
    if fault.chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = fault.size_bytes
    if record is not None:
        record.status = status
        record.outcome = "huge"
    sent = 0
    chunk = b'{"filler":"' + b"x" * 65_525  # 64 KiB
    try:
        await response.prepare(request)
        while sent < fault.size_bytes:
            part = chunk[: min(len(chunk), fault.size_bytes - sent)]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client stopped reading and closed the connection
    finally:
        if record is not None:
            record.bytes_sent = sent
    return response

def reset(
    request: web.Request, record: RequestRecord | None, outcome: str
) -> web.Response:
    """Close the TCP connection without an answer (RST, so the client sees a reset)."""
    if record is not None:
        record.outcome = outcome
        record.status = None
    transport = request.transport
    if transport is not None and not transport.is_closing():
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=204)  # never sent: the connection is gone

def json_answer(
    reply: Reply,
    record: RequestRecord | None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    if record is not None:
        record.status = reply.status
    all_headers = {"Content-Type": JSON_TYPE, **(headers or {})}
    return web.Response(body=dumps(reply.payload), status=reply.status, headers=all_headers)

def raw(
    status: int, body: str, content_type: str, record: RequestRecord | None
) -> web.Response:
    if record is not None:
        record.status = status
    return web.Response(
        body=body.encode("utf-8"), status=status, headers={"Content-Type": content_type}
    )
