"""One reconcile: observe, read the desired state, diff, and (with apply) repair.

The server is read BEFORE the tables: an instance created in between then shows up as a
completed creation the server list lacks (`missing_instance`, re-checked before any repair,
and harmless: the creation adopts the existing instance), never as an `orphan_instance`
that --delete-orphans would delete under a live user.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener.config import Settings
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import EvolutionError
from listener.evolution.models import InstanceInfo, WebhookSpec, WebhookState
from listener.fleet.servers import DEFAULT_SERVER
from listener.lifecycle.clients import ServerClients
from listener.lifecycle.reconcile.desired import read_desired
from listener.lifecycle.reconcile.diff import diff, webhook_targets
from listener.lifecycle.reconcile.model import (
    DRIFT_KINDS,
    INSTANCE_ID_MISMATCH,
    MISSING_INSTANCE,
    ORPHAN_INSTANCE,
    ORPHAN_ROW,
    UNPROVISIONED_PROFILE,
    WEBHOOK_DRIFT,
    DiffConfig,
    DriftItem,
    ObservedState,
    count_kinds,
    zero_counts,
)
from listener.lifecycle.reconcile.observe import ObservedStateReader, Progress, _no_progress
from listener.lifecycle.reconcile.patience import Patience
from listener.lifecycle.reconcile.repair import (
    RepairConfig,
    Repairer,
    RepairSkipped,
    VanishedAgain,
)

log = logging.getLogger("listener.reconcile")

# Repair order: record the server's instance before its webhook is recorded on that row.
_APPLY_ORDER = (UNPROVISIONED_PROFILE, MISSING_INSTANCE, INSTANCE_ID_MISMATCH, WEBHOOK_DRIFT,
                ORPHAN_ROW, ORPHAN_INSTANCE)


@dataclass(frozen=True)
class ReconcileOptions:
    prefix: str
    webhook: WebhookSpec
    integration: str
    concurrency: int
    deprovision: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, webhook: WebhookSpec) -> ReconcileOptions:
        return cls(prefix=settings.instance_prefix, webhook=webhook,
                   integration=settings.integration, concurrency=settings.concurrency,
                   deprovision=settings.deprovision)


@dataclass
class ReconcileReport:
    items: list[DriftItem]
    applied_mode: bool = False
    instances_seen: int = 0
    profiles_seen: int = 0
    applied: dict[str, int] = field(default_factory=zero_counts)
    skipped: int = 0
    failed: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return count_kinds(self.items)

    @property
    def has_drift(self) -> bool:
        return bool(self.items)

    def as_json(self) -> dict[str, Any]:
        """SPEC §9: counts (always the six kinds), drift items, applied (per kind, plus the
        repairs skipped on purpose and those that failed). No token anywhere."""
        return {
            "counts": self.counts,
            "drift": [item.as_json() for item in self.items],
            "applied": {**self.applied, "skipped": self.skipped, "failed": self.failed},
        }


class Reconciler:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        clients: ServerClients | EvolutionClient,
        options: ReconcileOptions,
        *,
        patience: Patience | None = None,
        progress: Progress = _no_progress,
        on_vanished_again: VanishedAgain | None = None,
    ) -> None:
        self.pool = pool
        self.clients = clients if isinstance(clients, ServerClients) \
            else ServerClients({DEFAULT_SERVER: clients})
        self.options = options
        self.patience = patience or Patience()
        self.progress = progress
        self.on_vanished_again = on_vanished_again
        self.diff_config = DiffConfig(prefix=options.prefix, webhook=options.webhook)

    async def run(self, *, apply: bool = False, delete_orphans: bool = False) -> ReconcileReport:
        readers, instances, found_on, unobserved = await self._observe()
        desired = await read_desired(self.pool)
        targets = webhook_targets(desired, instances, self.diff_config)
        webhooks: dict[str, WebhookState | None] = {}
        for server, reader in readers.items():  # each name read where it lives
            webhooks.update(await reader.webhooks([n for n in targets if found_on[n] == server]))
        observed = ObservedState(instances=instances, webhooks=webhooks, found_on=found_on,
                                 unobserved=frozenset(unobserved))
        items = diff(desired, observed, self.diff_config)
        report = ReconcileReport(items, applied_mode=apply, instances_seen=len(instances),
                                 profiles_seen=len(desired.profiles))
        if apply:
            config = RepairConfig(webhook=self.options.webhook,
                                  integration=self.options.integration,
                                  deprovision=self.options.deprovision,
                                  delete_orphans=delete_orphans)
            repairer = Repairer(self.pool, self.clients, config, self.patience, instances,
                                self.on_vanished_again)
            await self._apply(report, repairer)
        return report

    async def _observe(self) -> tuple[dict[str, ObservedStateReader], dict[str, InstanceInfo],
                                      dict[str, str], set[str]]:
        """fetchInstances once per server (SPEC §10). With several servers, one whose list
        cannot be read is skipped this round (logged): its rows are neither missing nor
        orphaned. One server failing alone fails the run, as before."""
        readers: dict[str, ObservedStateReader] = {}
        instances: dict[str, InstanceInfo] = {}
        found_on: dict[str, str] = {}
        unobserved: set[str] = set()
        for server, client in self.clients.items():
            reader = ObservedStateReader(client, prefix=self.options.prefix,
                                         concurrency=self.options.concurrency,
                                         patience=self.patience, progress=self.progress)
            try:
                seen = await reader.instances()
            except EvolutionError as error:
                if len(self.clients) == 1:
                    raise
                unobserved.add(server)
                log.warning("server not observed this round", extra={
                    "server": server, "error": " ".join(str(error).split())[:300]})
                continue
            readers[server] = reader
            for name, info in seen.items():
                instances.setdefault(name, info)
                found_on.setdefault(name, server)
        return readers, instances, found_on, unobserved

    async def _apply(self, report: ReconcileReport, repairer: Repairer) -> None:
        actions: dict[str, Callable[[DriftItem], Awaitable[str]]] = {
            UNPROVISIONED_PROFILE: repairer.requeue_creation,
            MISSING_INSTANCE: lambda item: self._requeue_missing(repairer, item),
            INSTANCE_ID_MISMATCH: repairer.record_server_instance,
            WEBHOOK_DRIFT: repairer.set_webhook,
            ORPHAN_ROW: repairer.queue_deletion,
            ORPHAN_INSTANCE: repairer.delete_orphan,
        }
        assert set(actions) == set(DRIFT_KINDS)
        gate = asyncio.Semaphore(max(1, self.options.concurrency))
        done = 0

        async def one(item: DriftItem) -> None:
            nonlocal done
            async with gate:
                try:
                    item.repair = await actions[item.kind](item)
                    report.applied[item.kind] += 1
                except RepairSkipped as skipped:
                    item.repair = str(skipped)
                    report.skipped += 1
                except (EvolutionError, psycopg.Error) as error:
                    item.repair = f"failed: {' '.join(str(error).split())[:300]}"
                    item.repair_failed = True
                    report.failed += 1
                    log.error("repair failed", extra={"kind": item.kind,
                                                      "instance": item.instance_name,
                                                      "error": item.repair})
            done += 1
            self.progress("repairs", done, len(report.items))

        for kind in _APPLY_ORDER:  # a kind's repairs run together, kinds one after another
            await asyncio.gather(*(one(item) for item in report.items if item.kind == kind))

    async def _requeue_missing(self, repairer: Repairer, item: DriftItem) -> str:
        if not await repairer.still_missing(item):
            raise RepairSkipped("present again on a second look (a creation just finished)")
        return await repairer.requeue_creation(item)
