"""The repairs of --apply, one per drift kind, through the normal paths: a creation is a
`pending` queue row (the running service provisions it at once, through the NOTIFY), a
deletion is a deletion row; only the webhook and the record are fixed here directly.

Each repair returns what it did (a short phrase for the report) or raises; `Repairer`
never decides *whether* to repair: that is the diff's job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.db import queries
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import InvalidResponseError, NotFoundError
from listener.evolution.models import InstanceInfo, WebhookSpec
from listener.lifecycle.clients import ServerClients
from listener.lifecycle.reconcile.model import DriftItem
from listener.lifecycle.reconcile.patience import Patience

log = logging.getLogger("listener.reconcile")

# (user_id, instance_name, times it went missing): the server deletes instances by itself.
VanishedAgain = Callable[[uuid.UUID, str, int], None]


class RepairSkipped(Exception):
    """Not repaired on purpose (a setting or a flag says so): reported, not a failure."""


@dataclass(frozen=True)
class RepairConfig:
    webhook: WebhookSpec
    integration: str
    deprovision: bool
    delete_orphans: bool


class Repairer:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        clients: ServerClients | EvolutionClient,
        config: RepairConfig,
        patience: Patience,
        observed: Mapping[str, InstanceInfo],
        on_vanished_again: VanishedAgain | None = None,
    ) -> None:
        self.pool = pool
        self.clients = clients if isinstance(clients, ServerClients) \
            else ServerClients({"default": clients})
        self.config = config
        self.patience = patience
        self.observed = observed
        self.on_vanished_again = on_vanished_again

    async def requeue_creation(self, item: DriftItem) -> str:
        """unprovisioned_profile: a new pending row. missing_instance: the row reset through
        the seed's manual retry (its trigger notifies), and the repair remembered."""
        assert item.user_id is not None
        params = {"user_id": item.user_id}
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(queries.REQUEUE_CREATION_INSERT, params)
            queued = await cur.fetchone() is not None
            if not queued:
                await cur.execute(queries.REQUEUE_CREATION_RETRY, params)
                queued = await cur.fetchone() is not None
            if item.kind == "missing_instance":
                await cur.execute(queries.RECORD_MISSING_REPAIR, {
                    "user_id": item.user_id, "instance_name": item.instance_name})
                row = await cur.fetchone()
                times = int(row["missing_count"]) if row else 1
                if times > 1:
                    self._vanished_again(item, times)
        return "creation queued" if queued else "creation already queued"

    def _vanished_again(self, item: DriftItem, times: int) -> None:
        assert item.user_id is not None
        item.detail += (f"; missing again after a repair ({times} times): the server deletes "
                        "instances by itself (as DEL_INSTANCE does)")
        log.warning(
            "instance missing again after a repair: the Evolution server deletes instances by "
            "itself (as DEL_INSTANCE does); re-queued, but check the server's settings",
            extra={"user_id": str(item.user_id), "instance": item.instance_name,
                   "times_missing": times},
        )
        if self.on_vanished_again is not None:
            self.on_vanished_again(item.user_id, item.instance_name, times)

    def _client(self, item: DriftItem) -> EvolutionClient:
        """The client of the server the item's instance is on (SPEC §10)."""
        return self.clients.first if item.server is None else self.clients.client_for(item.server)

    async def record_server_instance(self, item: DriftItem) -> str:
        """instance_id_mismatch: the server's instance (id and token) becomes the record.
        An instance on another server than recorded is never moved (a connected WhatsApp
        session cannot change server without a new QR scan): reported only."""
        if "server" in item.fields:
            raise RepairSkipped("reported only: an instance is never moved between servers")
        server = self.observed[item.instance_name]
        async with self.pool.connection() as conn:
            await conn.execute(queries.RECORD_SERVER_INSTANCE, {
                "user_id": item.user_id, "instance_name": item.instance_name,
                "instance_id": server.instance_id,
                "integration": server.integration or self.config.integration,
                "webhook_url": self.config.webhook.url,
                "webhook_events": list(self.config.webhook.events),
                "instance_token": server.token,
            })
        return "server's instance recorded"

    async def set_webhook(self, item: DriftItem) -> str:
        """webhook_drift: set it again (an upsert), verify the answer, record it."""
        name = item.instance_name
        spec = self.config.webhook
        client = self._client(item)
        state = await self.patience.call(lambda: client.set_webhook(name, spec))
        if not state.matches(spec):
            raise InvalidResponseError(f"webhook of {name} still differs after set",
                                       operation="set_webhook")
        async with self.pool.connection() as conn:
            await conn.execute(queries.RECORD_WEBHOOK, {
                "user_id": item.user_id, "webhook_url": spec.url,
                "webhook_events": list(spec.events)})
        return "webhook set and recorded"

    async def queue_deletion(self, item: DriftItem) -> str:
        """orphan_row: deprovision, unless LISTENER_DEPROVISION=off."""
        if not self.config.deprovision:
            raise RepairSkipped("left in place (LISTENER_DEPROVISION=off)")
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(queries.QUEUE_DELETION, {
                "user_id": item.user_id, "instance_name": item.instance_name})
            row = await cur.fetchone()
        queued = row is not None and row["queued_id"] is not None
        return "deletion queued" if queued else "deletion already queued"

    async def delete_orphan(self, item: DriftItem) -> str:
        """orphan_instance: deleted only with --delete-orphans (404: already gone)."""
        if not self.config.delete_orphans:
            raise RepairSkipped("reported only (use --delete-orphans to delete it)")
        name = item.instance_name
        try:
            client = self._client(item)
            await self.patience.call(lambda: client.delete_instance(name))
        except NotFoundError:
            return "already gone"
        return "instance deleted"

    async def still_missing(self, item: DriftItem) -> bool:
        """A creation may have finished between the server read and the table read: look
        again before re-queuing (and before counting it as vanished)."""
        name = item.instance_name
        client = self._client(item)
        return await self.patience.call(lambda: client.fetch_instance(name)) is None
