"""The Evolution API simulator's HTTP server: one `Simulator`, its fault pipeline and timers.

Why it exists: the listener's tests, demo and benchmarks need an Evolution API that is
fast, local, deterministic and breakable on demand (errors, 429s, hangs, resets, lost
answers, outages, a rotated key). `behaviour.py` holds what the real server answers;
`routing.py` maps paths to operations; `control.py` is the test-facing control API;
`harness.py` runs one or several servers (in-process or in a thread); `cli.py` the command.

Order of one API request (a fault earlier in the list wins):
1. outage (503 page, reset, or refused connections): a proxy/network failure, GET / included
2. latency (`latency_ms` ± `latency_jitter_ms`)
3. the body is read and parsed like `express.json` (malformed JSON answers 400 later)
4. the next matching scripted fault (`ScriptedFault`), consumed in order
5. one draw for the rates: hang, reset, 429, 500, lost answer; then `webhook_set_error_rate`
6. the real behaviour (guards, auth, validation, controller)

What takes time on the real server, by default as recorded: a delete answers 200 at once
and the name stays in use for `delete_delay_s` (1 s), longer while a REMOVE_INSTANCE
delivery to a loopback webhook is retried; `del_instance_s` deletes instances left
unconnected (DEL_INSTANCE). A `restart()` loses pending deletes and DEL_INSTANCE timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from listener.dev.simulator import answers, deliveries
from listener.dev.simulator import control as control_api
from listener.dev.simulator.behaviour import Call, EvolutionBehaviour, Reply, envelope
from listener.dev.simulator.options import OutageMode, ScriptedFault, SimulatorOptions
from listener.dev.simulator.routing import parse_body, route
from listener.dev.simulator.state import (
    IdFactory,
    RequestLog,
    RequestRecord,
    SimInstance,
    SimWebhook,
    Store,
)

__all__ = ["STATES", "Simulator"]

_LOG = logging.getLogger("listener.dev.simulator")
_REDACTED = "<redacted>"
_SECRET_HEADERS = frozenset({"apikey", "authorization"})
STATES = frozenset({"close", "connecting", "open"})


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
        self._listen_lock: asyncio.Lock | None = None
        # In-memory work of the real server, lost on restart: DEL_INSTANCE timers and
        # REMOVE_INSTANCE deliveries holding a delete, by instance name.
        self._del_timers: dict[str, asyncio.TimerHandle] = {}
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        seed = self._options.seed
        self._delivery_rng = random.Random(None if seed is None else ~seed)
        self.behaviour.on_created = self._on_created
        self.behaviour.on_delete = self._on_delete

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
        self._listen_lock = asyncio.Lock()
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
        self._forget_server_work()
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

    def _spawn(self, coro: Any) -> asyncio.Task[None] | None:
        if self._loop is None or self._stopped:
            coro.close()
            return None
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pause_listening(self) -> None:
        async with self._lock():
            site, self._site = self._site, None
            self._listening = False
            if site is not None:
                await site.stop()

    async def _resume_listening(self) -> None:
        async with self._lock():
            if self._listening or self._runner is None or self._stopped:
                return
            site = web.TCPSite(self._runner, self._host, self._port)
            await site.start()
            self._site = site
            self._listening = True

    def _lock(self) -> asyncio.Lock:
        if self._listen_lock is None:
            self._listen_lock = asyncio.Lock()
        return self._listen_lock

    async def down(self) -> None:
        """The server goes away (connections refused) until `up()`: a test's server outage."""
        self.start_outage(None, "refuse")
        await self._pause_listening()

    async def up(self) -> None:
        """The server is back on the same port, its state kept."""
        self.end_outage()
        await self._resume_listening()

    # -- the server's own work: asynchronous deletes, DEL_INSTANCE ------------------------

    def _on_created(self, instance: SimInstance) -> None:
        after = self._options.del_instance_s
        if after is None or self._loop is None:
            return
        self._cancel_timer(instance.name)
        self._del_timers[instance.name] = self._loop.call_later(
            after, self._auto_delete, instance.name, instance.instance_id
        )

    def _auto_delete(self, name: str, instance_id: str) -> None:
        """DEL_INSTANCE: an instance not `open` N after creation is deleted (REMOVE_INSTANCE)."""
        self._del_timers.pop(name, None)
        instance = self.store.get(name)
        if instance is None or instance.instance_id != instance_id or instance.deleting:
            return
        if instance.state != "open":
            instance.state = "close"
            self._on_delete(instance)

    def _on_delete(self, instance: SimInstance) -> None:
        """Start the asynchronous cleanup; a REMOVE_INSTANCE delivery may hold it."""
        self._cancel_timer(instance.name)
        options = self._options
        hook = self.store.webhooks.get(instance.name)
        held = (
            options.deliver_remove_instance
            and hook is not None
            and deliveries.subscribes_remove(hook)
            and deliveries.is_loopback_url(str(hook.url))
            and self._loop is not None
            and not self._stopped
        )
        if not held or hook is None:
            self.store.schedule_delete(instance.name, options.delete_delay_s)
            return
        self.store.schedule_delete(instance.name, options.delete_delay_s, held=True)
        earliest = time.monotonic() + options.delete_delay_s
        task = self._spawn(self._deliver_then_finish(hook, instance, earliest))
        if task is not None:
            self._deliveries[instance.name] = task

    async def _deliver_then_finish(
        self, hook: SimWebhook, instance: SimInstance, earliest: float
    ) -> None:
        try:
            await deliveries.deliver(
                hook,
                instance,
                self._options.server_url or self.base_url,
                initial_s=self._options.webhook_retry_initial_s,
                attempts=self._options.webhook_max_attempts,
                rng=self._delivery_rng,
            )
        finally:
            if self._deliveries.get(instance.name) is asyncio.current_task():
                del self._deliveries[instance.name]
        if self.store.instances.get(instance.name) is instance:
            self.store.release_delete(instance.name, max(earliest, time.monotonic()))

    def _cancel_timer(self, name: str) -> None:
        timer = self._del_timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _forget_server_work(self) -> None:
        """What a restart loses: DEL_INSTANCE timers and in-flight deliveries."""
        for timer in self._del_timers.values():
            timer.cancel()
        self._del_timers.clear()
        for task in self._deliveries.values():
            task.cancel()
        self._deliveries.clear()

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
        done = self.store.complete_deletes(names)
        for name in done:
            task = self._deliveries.pop(name, None)
            if task is not None:
                task.cancel()
        return done

    def restart(self) -> list[str]:
        """Simulate a server restart: pending deletes are lost (those instances come back)
        and v2.3.6 auto-connects every Baileys instance (state `connecting`)."""
        self._forget_server_work()
        revived = self.store.cancel_deletes()
        for instance in self.store.instances.values():
            if instance.integration == "WHATSAPP-BAILEYS" and instance.state == "close":
                instance.state = "connecting"
        return revived

    def reseed(self) -> None:
        """Restart the fault draws from `options.seed` (after the seed was changed)."""
        self._rng = random.Random(self._options.seed)

    # -- behind the service's back (tests of drift and reconcile) --------------------------

    def delete_behind_the_back(self, name: str) -> bool:
        """The instance is gone at once (deleted by someone else, or DEL_INSTANCE finished);
        False when there was none."""
        self._cancel_timer(name)
        task = self._deliveries.pop(name, None)
        if task is not None:
            task.cancel()
        return self.store.remove(name) is not None

    def change_webhook(
        self,
        name: str,
        *,
        url: str | None = None,
        events: list[str] | None = None,
        headers: dict[str, str] | None = None,
        enabled: bool | None = None,
    ) -> SimWebhook:
        """Change the instance's webhook (or create one) without a request: the fields given
        replace the stored ones. KeyError when the instance does not exist."""
        instance = self.store.get(name)
        if instance is None:
            raise KeyError(name)
        hook = self.store.webhooks.get(name)
        if hook is None:
            hook = SimWebhook(
                id=self._ids.cuid(),
                instance_id=instance.instance_id,
                url=url or "",
                enabled=True if enabled is None else enabled,
                events=list(events or []),
                headers=headers,
            )
            self.store.webhooks[name] = hook
        else:
            if url is not None:
                hook.url = url
            if events is not None:
                hook.events = list(events)
            if headers is not None:
                hook.headers = headers
            if enabled is not None:
                hook.enabled = enabled
        return hook

    def drop_webhook(self, name: str) -> bool:
        """The instance loses its webhook row (a webhook lost); False when it had none."""
        return self.store.webhooks.pop(name, None) is not None

    def list_instances(self) -> list[dict[str, Any]]:
        """Every instance with its state and webhook (what GET /_sim/instances answers)."""
        return control_api.instance_listing(self)

    def set_state(self, name: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {sorted(STATES)}")
        instance = self.store.get(name)
        if instance is None:
            raise KeyError(name)
        instance.state = state

    def reset(self, *, keep_options: bool = False) -> None:
        """Back to the start: no instances, webhooks or request log, the options given at
        construction (with `keep_options`: the current options, minus scripted faults)."""
        self._forget_server_work()
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
        return control_api.simulator_state(self, limit=limit)

    async def control(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a control document (the body of POST /_sim/control); return the state."""
        return await control_api.apply_control(self, data)

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        if raw_path.startswith("/_sim/"):
            return await control_api.control_route(self, request, raw_path)
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
                peer_port=answers.peer_port(request),
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
        body, parse_error = parse_body(request.content_type, raw)
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
            return answers.reset(request, record, "lost")
        return answers.json_answer(reply, record)

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
            return answers.reset(request, record, "reset")
        if drawn == "rate_limit":
            headers = answers.retry_after_header(self._options.retry_after_s)
            return answers.json_answer(envelope(429, "Too Many Requests"), record, headers)
        if drawn == "webhook_set_error":
            return answers.json_answer(envelope(500, "simulated webhook set failure"), record)
        return answers.json_answer(envelope(500, "simulated internal error"), record)

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
            return answers.reset(request, record, "reset")
        if fault.kind == "hang":
            return await self._hang(request, record)
        if fault.kind == "huge":
            return await answers.huge(fault, request, record)
        if fault.kind == "html":
            status = fault.status or 502
            return answers.raw(status, answers.proxy_page(status), "text/html", record)
        if fault.kind == "raw":
            status = fault.status or 200
            return answers.raw(status, fault.body or "", fault.content_type or "text/plain", record)
        status = fault.status or 500
        message = fault.message if fault.message is not None else answers.default_message(status)
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        elif status == 429:
            headers = answers.retry_after_header(self._options.retry_after_s)
        return answers.json_answer(envelope(status, message), record, headers)

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
            return answers.raw(503, answers.proxy_page(503), "text/html", record)
        if mode == "refuse" and self._listening:
            self._spawn(self._pause_listening())
        return answers.reset(request, record, "reset")

    async def _hang(self, request: web.Request, record: RequestRecord | None) -> web.Response:
        if record is not None:
            record.outcome = "hang"
        closing = self._closing
        if closing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), self._options.hang_max_s)
        return answers.reset(request, record, "hang")
