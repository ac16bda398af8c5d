"""The health and metrics HTTP endpoint (LISTENER_METRICS_ADDR).

- `/healthz`: liveness. It is served by the service's own event loop, so an answer at all
  proves the loop turns; it checks nothing else, because restarting a process does not
  fix an unreachable database.
- `/readyz`: readiness. 200 `{"ready": true}` when the database is reachable, LISTEN is
  active and some Evolution server can take work (JSON may add what is degraded: servers
  backing off, placement waiting because every server is full); otherwise 503
  `{"ready": false, "reason": ...}`.
  The decision is the caller's callback: this module knows HTTP, not the worker.
- `/metrics`: Prometheus exposition of `Metrics.registry`.

Access logging is off: a scrape every few seconds would drown the service's own logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from listener.ops.metrics import Metrics

__all__ = ["OpsServer", "Readiness"]

_log = logging.getLogger(__name__)

# (ready, reason) or (ready, reason, details): details are extra JSON keys of the answer
# (what is degraded while still ready: servers backing off, placement waiting; SPEC §10).
Readiness = Callable[[], tuple[bool, str] | tuple[bool, str | None, dict[str, object]]]


class OpsServer:
    """aiohttp server for /healthz, /readyz and /metrics; `port` 0 binds an ephemeral port."""

    def __init__(self, host: str, port: int, metrics: Metrics, readiness: Readiness) -> None:
        self._host = host
        self._requested_port = port
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port actually bound (the requested one, or the ephemeral one for 0)."""
        if self._port is None:
            raise RuntimeError("OpsServer is not started")
        return self._port

    @property
    def host(self) -> str:
        return self._host

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        return app

    async def start(self) -> None:
        """Bind and serve; raises OSError naming the address if it cannot bind."""
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(
                error.errno,
                f"cannot serve health/metrics on {self._host}:{self._requested_port} "
                f"(LISTENER_METRICS_ADDR): {error.strerror or error}",
            ) from error
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        _log.info(
            "health and metrics listening",
            extra={"address": f"{self._host}:{self._port}"},
        )

    async def stop(self) -> None:
        """Stop serving; safe to call twice or before `start`."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            answer = self._readiness()
            ready, reason = answer[0], answer[1]
            details: dict[str, object] = answer[2] if len(answer) > 2 else {}
        except Exception as error:  # a broken check means "not ready", never a 500
            _log.warning("readiness check raised", exc_info=True)
            ready, reason = False, f"readiness check failed: {type(error).__name__}"
            details = {}
        if ready:
            body: dict[str, object] = {"ready": True, **details}
            if details and reason:
                body["reason"] = reason
            return web.json_response(body)
        return web.json_response({"ready": False, "reason": reason or "not ready"}, status=503)

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render(request.headers.get("Accept"))
        response = web.Response(body=body)
        # Set the header verbatim: aiohttp's content_type= would drop the version parameter.
        response.headers["Content-Type"] = content_type
        return response
