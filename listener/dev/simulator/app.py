"""The Evolution API simulator: an aiohttp server that answers like v2.3.6, with fault switches.

Why it exists: the listener's tests, demo and benchmarks need an Evolution API that is
fast, local, deterministic and breakable on demand (errors, 429s, hangs, resets, lost
answers, outages, a rotated key). `behaviour.py` holds what the real server answers; this
module is the HTTP side: routing like Express, the fault pipeline, the request log and the
control endpoints.

Order of one API request (a fault earlier in the list wins):
1. outage (503 page, reset, or refused connections): a proxy/network failure, GET / included
2. latency (`latency_ms` ± `latency_jitter_ms`)
3. the body is read and parsed like `express.json` (malformed JSON answers 400 later)
4. the next matching scripted fault (`ScriptedFault`), consumed in order
5. one draw for the rates: hang, reset, 429, 500, lost answer; then `webhook_set_error_rate`
6. the real behaviour (guards, auth, validation, controller)

Control (no key; bind to loopback only):
- `GET /_sim/state`: options (key masked), counts, pending deletes, scripted faults
- `GET /_sim/requests?since=SEQ&limit=N`: the request log
- `POST /_sim/control`: JSON with any `SimulatorOptions` field, plus actions
  `outage` (bool, with optional `outage_s`, `outage_mode`), `add_faults` ([fault...]),
  `fail_next` ({"operation", "statuses": [...], "instance"}), `clear_script` (true),
  `complete_deletes` (true or [names]), `restart` (true), `set_state` ({name: state}),
  `refuse_s` (seconds of refused connections)
- `POST /_sim/reset`: forget everything (`{"keep_options": true}` keeps the options)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import web

from listener import aio
from listener.dev.simulator.behaviour import Call, EvolutionBehaviour, Reply, dumps, envelope
from listener.dev.simulator.options import (
    OutageMode,
    ScriptedFault,
    SimulatorOptions,
    options_from_json,
)
from listener.dev.simulator.schema import js_json_error
from listener.dev.simulator.state import (
    IdFactory,
    RequestLog,
    RequestRecord,
    SimInstance,
    SimWebhook,
    Store,
)

__all__ = [
    "Simulator",
    "SimulatorThread",
    "main",
    "route",
    "running_simulator",
    "serve",
]

_LOG = logging.getLogger("listener.dev.simulator")
_T = TypeVar("_T")
_JSON_TYPE = "application/json; charset=utf-8"
_REDACTED = "<redacted>"
_SECRET_HEADERS = frozenset({"apikey", "authorization"})
_STATES = frozenset({"close", "connecting", "open"})
_OPTION_FIELDS = frozenset(f.name for f in dataclasses.fields(SimulatorOptions))
_ACTIONS = frozenset(
    {
        "outage",
        "add_faults",
        "fail_next",
        "clear_script",
        "complete_deletes",
        "restart",
        "set_state",
        "refuse_s",
    }
)

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


def _proxy_page(status: int) -> str:
    """An nginx-style error page, what a reverse proxy answers when the API is down."""
    phrases = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
    title = f"{status} {phrases.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


def _default_message(status: int) -> Any:
    """Message shapes like the real server: string for 401/5xx, array for other 4xx."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status == 401 or status >= 500:
        return phrase if status == 401 else f"simulated {status} {phrase}"
    return [f"simulated {status} {phrase}"]


def _retry_after_header(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


def _peer_port(request: web.BaseRequest) -> int | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
        return peer[1]
    return None


class Simulator:
    """An in-process Evolution API v2.3.6 with fault injection; see the module docstring.

    Inspect `instances`, `webhooks` and `requests` from Python; change `options` at any time.
    """

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self._options = options if options is not None else SimulatorOptions()
        self._initial = copy.deepcopy(self._options)
        self.store = Store()
        self.log = RequestLog(self._options.record_limit)
        self._rng = random.Random(self._options.seed)
        self._ids = IdFactory(self._options.seed)
        self.behaviour = EvolutionBehaviour(self.store, self._options, self._ids)
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._listening = False
        self._stopped = False
        self._outage_until: float | None = None
        self._outage_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- properties ----------------------------------------------------------------------

    @property
    def options(self) -> SimulatorOptions:
        return self._options

    @options.setter
    def options(self, value: SimulatorOptions) -> None:
        self._options = value
        self.behaviour.options = value

    @property
    def api_key(self) -> str:
        return self._options.api_key

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def instances(self) -> dict[str, SimInstance]:
        return self.store.instances

    @property
    def webhooks(self) -> dict[str, SimWebhook]:
        return self.store.webhooks

    @property
    def requests(self) -> list[RequestRecord]:
        return list(self.log.records)

    @property
    def listening(self) -> bool:
        return self._listening

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind and serve (port 0 picks a free port; see `port` / `base_url`)."""
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        self._stopped = False
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._site = site
        self._listening = True
        self._host = host
        address = self._runner.addresses[0]
        self._port = int(address[1])
        self.behaviour.server_url = self.base_url
        if self._options.outage:
            self.start_outage(self._options.outage_s, self._options.outage_mode)

    async def stop(self) -> None:
        """Stop serving; hanging requests are released (reset) so shutdown never blocks."""
        self._stopped = True
        if self._closing is not None:
            self._closing.set()
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._site = None
        self._listening = False

    async def __aenter__(self) -> Simulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        if self._loop is None or self._stopped:
            coro.close()
            return
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pause_listening(self) -> None:
        site, self._site = self._site, None
        self._listening = False
        if site is not None:
            await site.stop()

    async def _resume_listening(self) -> None:
        if self._listening or self._runner is None or self._stopped:
            return
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._site = site
        self._listening = True

    # -- Python helpers ------------------------------------------------------------------

    def add_fault(self, fault: ScriptedFault) -> None:
        """Queue a scripted fault (consumed by the next matching requests, in order)."""
        self._options.script.append(fault)

    def fail_next(self, operation: str | None, *statuses: int, instance: str | None = None) -> None:
        """Answer the next len(statuses) matching requests with these statuses, in order."""
        for status in statuses:
            self.add_fault(
                ScriptedFault(kind="status", operation=operation, instance=instance, status=status)
            )

    def clear_faults(self) -> None:
        self._options.script.clear()

    def start_outage(self, duration_s: float | None = None, mode: OutageMode | None = None) -> None:
        """Every API request fails (503, reset or refuse) until `end_outage` or `duration_s`."""
        options = self._options
        options.outage = True
        options.outage_s = duration_s
        if mode is not None:
            options.outage_mode = mode
        options.validate()
        self._outage_until = None if duration_s is None else time.monotonic() + duration_s
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        if self._loop is not None and duration_s is not None:
            self._outage_timer = self._loop.call_later(duration_s, self.end_outage)
        if options.outage_mode == "refuse" and self._listening:
            self._spawn(self._pause_listening())

    def end_outage(self) -> None:
        self._options.outage = False
        self._outage_until = None
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        if not self._listening and self._runner is not None:
            self._spawn(self._resume_listening())

    async def refuse_connections(self, duration_s: float) -> None:
        """Close the listening socket for `duration_s` (clients see connection refused)."""
        self.start_outage(duration_s, "refuse")
        await self._pause_listening()

    def complete_deletes(self, *names: str) -> list[str]:
        """Finish pending deletes now (all when no name is given): the names become free."""
        return self.store.complete_deletes(names)

    def restart(self) -> list[str]:
        """Simulate a server restart: pending deletes are lost (those instances come back)
        and v2.3.6 auto-connects every Baileys instance (state `connecting`)."""
        revived = self.store.cancel_deletes()
        for instance in self.store.instances.values():
            if instance.integration == "WHATSAPP-BAILEYS" and instance.state == "close":
                instance.state = "connecting"
        return revived

    def set_state(self, name: str, state: str) -> None:
        if state not in _STATES:
            raise ValueError(f"state must be one of {sorted(_STATES)}")
        instance = self.store.get(name)
        if instance is None:
            raise KeyError(name)
        instance.state = state

    def reset(self, *, keep_options: bool = False) -> None:
        """Back to the start: no instances, webhooks or request log, the options given at
        construction (with `keep_options`: the current options, minus scripted faults)."""
        self.store.clear()
        if keep_options:
            self._options.script.clear()
        else:
            for field in dataclasses.fields(SimulatorOptions):
                value = copy.deepcopy(getattr(self._initial, field.name))
                setattr(self._options, field.name, value)
        self.log = RequestLog(self._options.record_limit)
        self._rng = random.Random(self._options.seed)
        self._ids = IdFactory(self._options.seed)
        self.behaviour.ids = self._ids
        self.end_outage()

    def requests_for(
        self, operation: str | None = None, instance: str | None = None
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.log.records
            if (operation is None or r.operation == operation)
            and (instance is None or r.instance == instance)
        ]

    def state(self, *, limit: int = 1000) -> dict[str, Any]:
        """What GET /_sim/state answers."""
        names = list(itertools.islice(self.store.instances, limit))
        return {
            "base_url": self.base_url,
            "listening": self._listening,
            "outage_active": self._options.outage,
            "options": self._options.to_json(),
            "instances": len(self.store.instances),
            "instance_names": names,
            "pending_deletes": sorted(self.store.pending_deletes),
            "webhooks": len(self.store.webhooks),
            "requests_total": self.log.total,
        }

    async def control(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a control document (the body of POST /_sim/control); return the state."""
        unknown = set(data) - _OPTION_FIELDS - _ACTIONS - {"outage_s", "outage_mode"}
        if unknown:
            raise ValueError(f"unknown control keys: {', '.join(sorted(unknown))}")
        plain = {
            k: v for k, v in data.items() if k in _OPTION_FIELDS and k not in ("outage", "script")
        }
        if "script" in data:
            plain["script"] = data["script"]
        changed = options_from_json(self._options, plain)
        if "seed" in changed:
            self._rng = random.Random(self._options.seed)
        if "outage" in data:
            if data["outage"] is True:
                self.start_outage(self._options.outage_s, self._options.outage_mode)
            elif data["outage"] is False:
                self.end_outage()
            else:
                raise ValueError("outage must be true or false")
        for item in data.get("add_faults") or []:
            self.add_fault(ScriptedFault.from_json(item))
        if "fail_next" in data:
            spec = data["fail_next"]
            if not isinstance(spec, dict) or not isinstance(spec.get("statuses"), list):
                raise ValueError('fail_next must be {"operation", "statuses": [...], "instance"}')
            self.fail_next(spec.get("operation"), *spec["statuses"], instance=spec.get("instance"))
        if data.get("clear_script") is True:
            self.clear_faults()
        deletes = data.get("complete_deletes")
        if deletes is True:
            self.complete_deletes()
        elif isinstance(deletes, list):
            self.complete_deletes(*[str(n) for n in deletes])
        if data.get("restart") is True:
            self.restart()
        for name, state in (data.get("set_state") or {}).items():
            self.set_state(name, state)
        if "refuse_s" in data:
            self.start_outage(float(data["refuse_s"]), "refuse")
        return self.state()

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        if raw_path.startswith("/_sim/"):
            return await self._control_route(request, raw_path)
        options = self._options
        started = time.perf_counter()
        routed = route(request.method, raw_path)
        operation, name = routed if routed is not None else ("unknown", None)
        key = request.headers.get("apikey")
        record: RequestRecord | None = None
        if options.record_requests:
            kind = self.behaviour.key_kind(key)
            record = RequestRecord(
                seq=self.log.next_seq(),
                started_at=time.time(),
                method=request.method,
                path=unquote(raw_path),
                raw_target=request.raw_path,
                query=dict(request.query),
                headers={
                    k: (_REDACTED if k.lower() in _SECRET_HEADERS else v)
                    for k, v in request.headers.items()
                },
                key_kind=kind,
                has_valid_key=kind in ("global", "instance") and not options.wrong_key,
                body=None,
                body_size=0,
                operation=operation,
                instance=name,
                peer_port=_peer_port(request),
            )
            self.log.append(record)  # visible at once, so a hanging request can be seen
        else:
            self.log.next_seq()  # still counted in `requests_total`
        try:
            return await self._answer(request, operation, name, key, record)
        finally:
            if record is not None:
                record.duration_s = time.perf_counter() - started
                if options.log_requests:
                    _LOG.info(
                        "%s %s -> %s (%s)",
                        record.method,
                        record.raw_target,
                        record.status,
                        record.outcome,
                    )

    async def _answer(
        self,
        request: web.Request,
        operation: str,
        name: str | None,
        key: str | None,
        record: RequestRecord | None,
    ) -> web.StreamResponse:
        options = self._options
        if options.outage and self._outage_active():
            return self._outage_answer(request, record)
        if options.latency_ms or options.latency_jitter_ms:
            jitter = options.latency_jitter_ms
            delay_ms = options.latency_ms + (self._rng.uniform(-jitter, jitter) if jitter else 0.0)
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
        raw = await request.read()
        body, parse_error = _parse_body(request.content_type, raw)
        if operation == "create_instance" and isinstance(body, dict):
            candidate = body.get("instanceName")
            name = candidate if isinstance(candidate, str) else None
        elif operation == "fetch_instances":
            name = request.query.get("instanceName")
        if record is not None:
            record.body_size = len(raw)
            record.body = body if raw else None
            record.instance = name
        lose = False
        if options.script:
            fault = self._take_fault(operation, name)
            if fault is not None:
                if record is not None:
                    record.fault = fault.kind
                if fault.kind == "delay":
                    await asyncio.sleep(fault.delay_s)
                elif fault.kind == "lose_response":
                    lose = True
                else:
                    return await self._fault_answer(fault, request, record)
        if not lose:
            drawn = self._draw(operation)
            if drawn is not None:
                if record is not None:
                    record.fault = drawn
                if drawn == "lose_response":
                    lose = True
                else:
                    return await self._rate_answer(drawn, request, record)
        if parse_error is not None:
            # body-parser's SyntaxError through the global error handler: status 400 with
            # error "Internal Server Error" and a string message (observed).
            reply = Reply(
                400,
                {
                    "status": 400,
                    "error": "Internal Server Error",
                    "response": {"message": parse_error},
                },
            )
        elif operation == "unknown":
            reply = envelope(404, [f"Cannot {request.method} {request.raw_path}"])
        else:
            call = Call(request.method, operation, name, request.query, body, key)
            reply = await self.behaviour.dispatch(call)
        if lose:
            return self._reset(request, record, "lost")
        return self._json(reply, record)

    def _draw(self, operation: str) -> str | None:
        """One draw for all the rates (they partition [0, 1)); None means no fault."""
        options = self._options
        rates = (
            ("hang", options.hang_rate),
            ("reset", options.reset_rate),
            ("rate_limit", options.rate_limit_rate),
            ("error", options.error_rate),
            ("lose_response", options.lose_response_rate),
        )
        if any(rate for _, rate in rates):
            point = self._rng.random()
            for label, rate in rates:
                if point < rate:
                    return label
                point -= rate
        if (
            operation == "set_webhook"
            and options.webhook_set_error_rate
            and self._rng.random() < options.webhook_set_error_rate
        ):
            return "webhook_set_error"
        return None

    async def _rate_answer(
        self, drawn: str, request: web.Request, record: RequestRecord | None
    ) -> web.StreamResponse:
        if drawn == "hang":
            return await self._hang(request, record)
        if drawn == "reset":
            return self._reset(request, record, "reset")
        if drawn == "rate_limit":
            headers = _retry_after_header(self._options.retry_after_s)
            return self._json(envelope(429, "Too Many Requests"), record, headers)
        if drawn == "webhook_set_error":
            return self._json(envelope(500, "simulated webhook set failure"), record)
        return self._json(envelope(500, "simulated internal error"), record)

    def _take_fault(self, operation: str, name: str | None) -> ScriptedFault | None:
        script = self._options.script
        for index, fault in enumerate(script):
            if fault.matches(operation, name):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        del script[index]
                return fault
        return None

    async def _fault_answer(
        self, fault: ScriptedFault, request: web.Request, record: RequestRecord | None
    ) -> web.StreamResponse:
        if fault.kind == "reset":
            return self._reset(request, record, "reset")
        if fault.kind == "hang":
            return await self._hang(request, record)
        if fault.kind == "huge":
            return await self._huge(fault, request, record)
        if fault.kind == "html":
            status = fault.status or 502
            return self._raw(status, _proxy_page(status), "text/html", record)
        if fault.kind == "raw":
            status = fault.status or 200
            return self._raw(status, fault.body or "", fault.content_type or "text/plain", record)
        status = fault.status or 500
        message = fault.message if fault.message is not None else _default_message(status)
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        elif status == 429:
            headers = _retry_after_header(self._options.retry_after_s)
        return self._json(envelope(status, message), record, headers)

    def _outage_active(self) -> bool:
        now = time.monotonic()
        if self._outage_until is None and self._options.outage_s is not None:
            self._outage_until = now + self._options.outage_s  # the flag was flipped directly
        if self._outage_until is not None and now >= self._outage_until:
            self.end_outage()
            return False
        return True

    def _outage_answer(self, request: web.Request, record: RequestRecord | None) -> web.Response:
        if record is not None:
            record.fault = "outage"
        mode = self._options.outage_mode
        if mode == "503":
            return self._raw(503, _proxy_page(503), "text/html", record)
        if mode == "refuse" and self._listening:
            self._spawn(self._pause_listening())
        return self._reset(request, record, "reset")

    async def _hang(self, request: web.Request, record: RequestRecord | None) -> web.Response:
        if record is not None:
            record.outcome = "hang"
        closing = self._closing
        if closing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), self._options.hang_max_s)
        return self._reset(request, record, "hang")

    async def _huge(
        self, fault: ScriptedFault, request: web.Request, record: RequestRecord | None
    ) -> web.StreamResponse:
        """Stream `size_bytes` of filler; stop as soon as the client goes away."""
        status = fault.status or 200
        response = web.StreamResponse(status=status, headers={"Content-Type": _JSON_TYPE})
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

    def _reset(
        self, request: web.Request, record: RequestRecord | None, outcome: str
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

    def _json(
        self,
        reply: Reply,
        record: RequestRecord | None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        if record is not None:
            record.status = reply.status
        all_headers = {"Content-Type": _JSON_TYPE, **(headers or {})}
        return web.Response(body=dumps(reply.payload), status=reply.status, headers=all_headers)

    def _raw(
        self, status: int, body: str, content_type: str, record: RequestRecord | None
    ) -> web.Response:
        if record is not None:
            record.status = status
        return web.Response(
            body=body.encode("utf-8"), status=status, headers={"Content-Type": content_type}
        )

    async def _control_route(self, request: web.Request, raw_path: str) -> web.Response:
        path = raw_path.rstrip("/")
        try:
            if path == "/_sim/state" and request.method == "GET":
                limit = int(request.query.get("limit", "1000"))
                return _control_json(200, self.state(limit=limit))
            if path == "/_sim/requests" and request.method == "GET":
                since = int(request.query.get("since", "0"))
                limit = int(request.query.get("limit", "1000"))
                records = self.log.since(since, limit)
                return _control_json(
                    200,
                    {"total": self.log.total, "requests": [r.to_json() for r in records]},
                )
            if path == "/_sim/control" and request.method == "POST":
                data = await request.json() if await request.read() else {}
                if not isinstance(data, dict):
                    raise ValueError("the control body must be a JSON object")
                return _control_json(200, await self.control(data))
            if path == "/_sim/reset" and request.method == "POST":
                data = await request.json() if await request.read() else {}
                keep = isinstance(data, dict) and data.get("keep_options") is True
                self.reset(keep_options=keep)
                return _control_json(200, self.state())
        except (ValueError, TypeError, KeyError) as error:
            return _control_json(400, {"error": f"{type(error).__name__}: {error}"})
        return _control_json(404, {"error": f"no control route {request.method} {path}"})


def _control_json(status: int, payload: Any) -> web.Response:
    return web.Response(body=dumps(payload), status=status, headers={"Content-Type": _JSON_TYPE})


def _parse_body(content_type: str, raw: bytes) -> tuple[Any, str | None]:
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


@contextlib.asynccontextmanager
async def running_simulator(
    options: SimulatorOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """`async with running_simulator(opts) as sim:` a started simulator, stopped on exit."""
    simulator = Simulator(options)
    await simulator.start(host, port)
    try:
        yield simulator
    finally:
        await simulator.stop()


class SimulatorThread:
    """A simulator on its own event loop in a background thread (for sync code, benchmarks).

    Mutate state from other threads through `call`, which runs a function on its loop.
    """

    def __init__(
        self, options: SimulatorOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(options)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return self.simulator.base_url

    @property
    def api_key(self) -> str:
        return self.simulator.api_key

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="evolution-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None:
            raise RuntimeError("the simulator did not start") from self._error
        return self.simulator

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.simulator.start(self._host, self._port)
        except BaseException as error:  # reported to start()
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.simulator.stop()

    def call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run `function(*args)` on the simulator's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("not started")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as error:
                future.set_exception(error)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def serve(host: str, port: int, options: SimulatorOptions) -> None:
    """Serve until cancelled (the CLI's `simulator` subcommand and the demo use this)."""
    simulator = Simulator(options)
    await simulator.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evolution-listener simulator",
        description="Run the Evolution API v2.3.6 simulator (with fault switches) until "
        "SIGINT/SIGTERM. Control it at runtime with POST /_sim/control.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any)")
    parser.add_argument("--api-key", default="sim-key", help="the global API key")
    parser.add_argument("--latency-ms", type=_non_negative, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=_non_negative, default=0.0)
    parser.add_argument("--error-rate", type=_rate, default=0.0, help="share answered 500")
    parser.add_argument("--rate-limit-rate", type=_rate, default=0.0, help="share answered 429")
    parser.add_argument("--retry-after-s", type=_non_negative, default=1.0)
    parser.add_argument("--hang-rate", type=_rate, default=0.0, help="share never answered")
    parser.add_argument("--reset-rate", type=_rate, default=0.0, help="share reset, no answer")
    parser.add_argument(
        "--lose-response-rate", type=_rate, default=0.0, help="share done but answer dropped"
    )
    parser.add_argument("--webhook-set-error-rate", type=_rate, default=0.0)
    parser.add_argument("--delete-delay-s", type=_non_negative, default=0.0)
    parser.add_argument("--wrong-key", action="store_true", help="reject every key (401)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--record-limit",
        type=int,
        default=50_000,
        help="requests kept in the /_sim/requests ring (default 50000; 0 = none)",
    )
    parser.add_argument("--log-requests", action="store_true")
    return parser


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    return SimulatorOptions(
        api_key=args.api_key,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after_s,
        hang_rate=args.hang_rate,
        reset_rate=args.reset_rate,
        lose_response_rate=args.lose_response_rate,
        webhook_set_error_rate=args.webhook_set_error_rate,
        delete_delay_s=args.delete_delay_s,
        wrong_key=args.wrong_key,
        seed=args.seed,
        log_requests=args.log_requests,
        record_requests=args.record_limit > 0,
        record_limit=max(0, args.record_limit),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: parse flags, serve until SIGINT/SIGTERM, return 0 (1 if it cannot listen)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        options = options_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.log_requests:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: the control endpoints need no key", file=sys.stderr)
    try:
        return aio.run(_main_async(args.host, args.port, options))
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1


async def _main_async(host: str, port: int, options: SimulatorOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    simulator = Simulator(options)
    await simulator.start(host, port)
    print(f"Evolution API simulator (v{options.version}) on {simulator.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return 0
