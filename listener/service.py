"""`evolution-listener run`: wire the parts together and run until SIGTERM/SIGINT.

Start order matters for systemd: READY=1 only once LISTEN is active and the first sweep has
run, so `systemctl start` returning means signups are being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from datetime import UTC, datetime

from psycopg_pool import AsyncConnectionPool

from listener import admin
from listener.config import WEBHOOK_EVENTS, Settings
from listener.core.attempt import AttemptConfig
from listener.core.breaker import probe_evolution
from listener.core.loop import ClaimLoop, LoopConfig
from listener.core.rescue import Rescuer
from listener.db import pool as db_pool
from listener.db import queries
from listener.db.deletion_store import DeletionStore
from listener.db.store import CreationStore
from listener.evolution.client import EvolutionClient
from listener.evolution.models import WebhookSpec
from listener.fleet.servers import DEFAULT_SERVER, ServerSpec
from listener.fleet.status import fleet_readiness
from listener.lifecycle.clients import ServerClients
from listener.lifecycle.deprovision import deletion_kind
from listener.lifecycle.placing import Placer
from listener.lifecycle.provision import Provisioner, creation_kind
from listener.lifecycle.reconcile import ReconcileOptions, Reconciler
from listener.lifecycle.reconcile.scheduler import ReconcileScheduler
from listener.ops.http import OpsServer
from listener.ops.metrics import Metrics, WorkMetrics
from listener.ops.sdnotify import SystemdNotifier
from listener.policy import RetryPolicy
from listener.wakeup import ListenConnection

log = logging.getLogger("listener.service")

HOUSEKEEPING_TICK_S = 1.0
GAUGE_REFRESH_S = 10.0


def replica_id() -> str:
    """Who holds a lease: host, pid and a random suffix (pids repeat across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def webhook_spec(settings: Settings) -> WebhookSpec:
    headers: dict[str, str] = {}
    if settings.webhook_authorization is not None:
        headers["Authorization"] = settings.webhook_authorization.get_secret_value()
    return WebhookSpec(url=settings.webhook_url, events=WEBHOOK_EVENTS, headers=headers)


def loop_config(settings: Settings) -> LoopConfig:
    return LoopConfig(
        concurrency=settings.concurrency,
        sweep_interval_s=settings.sweep_interval_s,
        shutdown_grace_s=settings.shutdown_grace_s,
    )


def attempt_config(settings: Settings) -> AttemptConfig:
    return AttemptConfig(
        lease_s=settings.lease_s,
        max_reclaims=settings.max_reclaims,
        retry=RetryPolicy(max_retries=settings.max_retries, base_ms=settings.retry_base_ms),
    )


def make_pool(settings: Settings, *, max_size: int | None = None) -> AsyncConnectionPool:
    return db_pool.make_pool(settings.dsn, max_size=max_size or settings.pool_size)


def make_client(settings: Settings, metrics: Metrics | None = None,
                server: ServerSpec | None = None) -> EvolutionClient:
    """The client of one Evolution server (default: the first configured one); its
    request metrics carry the server's name."""
    spec = server or settings.servers[0]
    observer = None
    if metrics is not None:
        durations = metrics.evolution_request_duration
        errors = metrics.evolution_errors

        def observer(operation: str, duration_s: float, failure: str | None) -> None:
            durations.labels(operation=operation, server=spec.name).observe(duration_s)
            if failure is not None:
                errors.labels(operation=operation, status=failure, server=spec.name).inc()

    return EvolutionClient(
        spec.base_url,
        spec.api_key.get_secret_value(),
        timeout_s=settings.http_timeout_s,
        max_connections=max(settings.concurrency * 2, 8),
        observer=observer,
    )


def make_clients(settings: Settings, metrics: Metrics | None = None) -> ServerClients:
    """One client per configured Evolution server, by name (SPEC §10)."""
    return ServerClients({spec.name: make_client(settings, metrics, spec)
                          for spec in settings.servers})


class Service:
    """The running replica: pool, client, LISTEN connection (with the liveness lock),
    claim loop, rescuer of dead replicas' rows, ops server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.notifier = SystemdNotifier()
        self.stop = asyncio.Event()
        self.alive = asyncio.Event()  # the liveness lock's session is up: claiming is safe
        self.pool = make_pool(settings)
        self.metrics.init_servers([(s.name, s.capacity, not s.accepts_placements)
                                   for s in settings.servers])
        self.clients = make_clients(settings, self.metrics)
        self.client = self.clients.first
        self.owner = replica_id()
        self.store = CreationStore(self.pool, self.owner, settings.lease_s)
        self.provisioner = Provisioner(
            self.clients,
            webhook_spec(settings),
            integration=settings.integration,
            prefix=settings.instance_prefix,
        )
        options = ReconcileOptions.from_settings(settings, self.provisioner.webhook)
        self.reconcile = ReconcileScheduler(settings.dsn, Reconciler(
            self.pool, self.clients, options), self.metrics, settings.reconcile_interval_s)
        work_metrics = WorkMetrics(self.metrics)
        self.placer = Placer(self.store, settings.servers,
                             backing_off=lambda: self.worker.breakers.paused(time.monotonic()),
                             observer=work_metrics)
        # Without EVOLUTION_API_SERVERS there is one unlimited server, `default`: nothing to
        # choose, so no placement round trip per entry (a NULL server means `default`; a later
        # servers file keeps that server under the name `default`, see README).
        self.creation = creation_kind(self.store, self.provisioner, settings.webhook_url,
                                      list(WEBHOOK_EVENTS),
                                      self.placer if settings.servers_file else None)
        kinds = [self.creation]
        kind_of_channel = {queries.CHANNEL: self.creation.name}
        if settings.deprovision:  # off: deletion rows stay pending (reconcile: orphan_row)
            kinds.append(deletion_kind(DeletionStore(self.pool, self.owner, settings.lease_s),
                                       self.client_for, settings.instance_prefix))
            kind_of_channel[queries.DELETION_CHANNEL] = kinds[-1].name
        self.worker = ClaimLoop(
            loop_config(settings), kinds, attempt_config(settings),
            probe_for=lambda server: lambda: probe_evolution(self.clients.client_for(server)),
            observer=work_metrics, alive=self.alive, servers=[s.name for s in settings.servers],
            kind_of_channel=kind_of_channel)
        self.listen = ListenConnection(
            settings.dsn,
            on_notify=lambda note: self.worker.notified(note.channel, note.id),
            on_connected=self._on_connected,
            on_state=self._on_listen_state,
            owner=self.owner,
            channels=(queries.CHANNEL, queries.DELETION_CHANNEL) if settings.deprovision
            else (queries.CHANNEL,),
        )
        self.rescuer = Rescuer(
            self.worker.kinds, wake=self.worker.wake,
            on_rescued=lambda kind, rows: self.metrics.rescued.labels(kind=kind).inc(rows))
        host, port = settings.metrics_host_port
        self.ops = OpsServer(host, port, self.metrics, self.readiness)
        self._ready_sent = False
        self._last_cleanup_day: str | None = None
        self._cleanup_task: asyncio.Task[None] | None = None

    def _on_listen_state(self, up: bool) -> None:
        """The LISTEN connection carries the liveness lock: claim only while it is up."""
        self.metrics.listen_connected.set(1 if up else 0)
        if up:
            self.alive.set()
            self.worker.wake()
        else:
            self.alive.clear()

    def client_for(self, server: str | None) -> EvolutionClient:
        """The client of the server an instance lives on (`default` when none was recorded:
        a row from before the fleet); an unlisted server raises UnknownServerError."""
        return self.clients.client_for(server or DEFAULT_SERVER)

    def _on_connected(self, reconnected: bool) -> None:
        if reconnected:
            self.metrics.listen_reconnects.inc()
        self.worker.request_sweep()

    def readiness(self) -> tuple[bool, str | None, dict[str, object]]:
        if self.stop.is_set():
            return False, "shutting down", {}
        if not self.listen.connected:
            return False, f"LISTEN connection down: {self.listen.last_error}", {}
        if self.worker.db_error is not None:
            return False, f"database unreachable: {self.worker.db_error}", {}
        fleet = fleet_readiness(self.worker.breakers.names, self.worker.breakers.open_reasons(),
                                self.placer.watch.current)
        if not fleet.ready:
            return False, fleet.reason, {}
        if not self.worker.first_sweep_done.is_set():
            return False, "starting: first sweep not done", {}
        return True, fleet.reason or "ok", fleet.details

    def request_stop(self, signame: str) -> None:
        if not self.stop.is_set():
            log.info("stopping", extra={"signal": signame,
                                        "in_flight": self.worker.in_flight})
            self.notifier.stopping()
            self.stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        await self.ops.start()
        await self.pool.open(wait=False)
        await self.clients.start()
        log.info(
            "starting",
            extra={"replica": self.owner, "database": self.settings.dsn_for_display,
                   "evolution_api": {s.name: s.base_url for s in self.settings.servers},
                   "webhook_url": self.settings.webhook_url,
                   "concurrency": self.settings.concurrency,
                   "metrics": f"http://{self.ops.host}:{self.ops.port}/metrics"},
        )
        listen_task = asyncio.create_task(self.listen.run(), name="listen")
        worker_task = asyncio.create_task(self.worker.run(self.stop), name="worker")
        house_task = asyncio.create_task(self._housekeeping(worker_task, listen_task),
                                         name="housekeeping")
        reconcile_task = asyncio.create_task(self.reconcile.run(self.stop), name="reconcile")
        rescue_task = asyncio.create_task(self.rescuer.run(), name="rescue")
        try:
            await worker_task
        finally:
            tasks = [rescue_task, house_task, listen_task, reconcile_task]
            if self._cleanup_task is not None:
                tasks.append(self._cleanup_task)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.ops.stop()
            await self.clients.close()
            await self.pool.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("stopped", extra={"completed": self.worker.counts.completed,
                                   "released": self.worker.counts.released})
        return 0

    async def _housekeeping(self, worker_task: asyncio.Task[None],
                            listen_task: asyncio.Task[None]) -> None:
        """READY once, WATCHDOG while the loop and its tasks live, gauges, daily cleanup."""
        next_gauges = 0.0
        while True:
            if not self._ready_sent and self.listen.connected \
                    and self.worker.first_sweep_done.is_set():
                self._ready_sent = True
                self.notifier.ready("listening")
                log.info("ready")
            if self._ready_sent and not worker_task.done() and not listen_task.done() \
                    and not self.worker.stalled():
                self.notifier.watchdog()
            now = time.monotonic()
            if now >= next_gauges:
                next_gauges = now + GAUGE_REFRESH_S
                await self._refresh_gauges()
            await self._maybe_cleanup()
            await asyncio.sleep(HOUSEKEEPING_TICK_S)

    async def _refresh_gauges(self) -> None:
        try:
            depth = await self.store.work_depth()
        except Exception as error:  # a scrape-side nicety must never kill the loop
            log.debug("queue gauges not refreshed", extra={"error": str(error)[:200]})
            return
        self.metrics.refresh_queue_gauges(
            {"pending": depth.pending, "processing": depth.processing, "failed": depth.failed},
            depth.oldest_pending_age_s,
        )
        try:
            usage = await self.store.server_usage()
        except Exception as error:
            log.debug("server gauges not refreshed", extra={"error": str(error)[:200]})
            return
        self.metrics.refresh_server_gauges(
            {name: (u.instances, u.in_flight) for name, u in usage.items()},
            [s.name for s in self.settings.servers])

    async def _maybe_cleanup(self) -> None:
        at = self.settings.cleanup_schedule
        if at is None:
            return
        now = datetime.now(UTC)
        today = now.strftime("%Y-%m-%d")
        if self._last_cleanup_day == today or now.strftime("%H:%M") < at:
            return
        self._last_cleanup_day = today
        # Its own task: a long cleanup must not hold up READY/WATCHDOG pings.
        self._cleanup_task = asyncio.create_task(self._cleanup(), name="cleanup")

    async def _cleanup(self) -> None:
        try:
            deleted = await admin.cleanup(self.pool, self.settings.cleanup_older_than_days)
        except Exception as error:
            log.error("scheduled cleanup failed", extra={"error": str(error)[:300]})
            return
        log.info("scheduled cleanup", extra={"deleted": deleted,
                                             "older_than_days":
                                                 self.settings.cleanup_older_than_days})


async def run_service(settings: Settings) -> int:
    return await Service(settings).run()
