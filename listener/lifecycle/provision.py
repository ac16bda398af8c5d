"""Provisioning one user: create or adopt the instance, make its webhook right.

`CreationJob` is the creation queue's job handler: the attempt is `Provisioner.provision`,
the completion writes the instance row and `completed` together (batched).

Idempotent by construction: the instance name is derived from the user id, so a retry, a
second replica or a manual re-run can only find the same instance, never make another one.
No SQL and no HTTP details here: the client speaks HTTP, the store speaks SQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from listener.core.batcher import CompletionBatcher
from listener.core.jobs import JobKind, StepReporter
from listener.db.store import ClaimedEntry, CreationStore, InstanceRecord
from listener.evolution.client import EvolutionClient
from listener.evolution.errors import AlreadyExistsError, InvalidResponseError, TransientError
from listener.evolution.models import WebhookSpec
from listener.fleet.servers import DEFAULT_SERVER
from listener.lifecycle.clients import ServerClients
from listener.lifecycle.placing import Placer


def instance_name_for(prefix: str, user_id: uuid.UUID) -> str:
    """`evo-<uuid>`: lowercase with dashes, deterministic."""
    return f"{prefix}{str(user_id).lower()}"


@dataclass(frozen=True)
class Provisioned:
    instance_name: str
    instance_id: str | None
    integration: str
    instance_token: str | None
    adopted: bool


def _quiet(step: str, fields: dict[str, object]) -> None:
    return None


class Provisioner:
    """Brings one user's instance to the desired state through the Evolution API."""

    def __init__(
        self,
        clients: ServerClients | EvolutionClient,
        webhook: WebhookSpec,
        *,
        integration: str,
        prefix: str,
    ) -> None:
        if isinstance(clients, EvolutionClient):  # one server: named `default`
            clients = ServerClients({DEFAULT_SERVER: clients})
        self.clients = clients
        self.webhook = webhook
        self.integration = integration
        self.prefix = prefix

    @property
    def client(self) -> EvolutionClient:
        """The first server's client (single-server callers)."""
        return self.clients.first

    async def provision(
        self, user_id: uuid.UUID, report: StepReporter = _quiet, server: str | None = None
    ) -> Provisioned:
        """On `server` (the entry's recorded one; None: the first configured server)."""
        client = self.clients.first if server is None else self.clients.client_for(server)
        name = instance_name_for(self.prefix, user_id)
        try:
            created = await client.create_instance(
                name, integration=self.integration, webhook=self.webhook
            )
            report("created", {"instance": name, "instance_id": created.instance_id})
            result = Provisioned(
                instance_name=name,
                instance_id=created.instance_id,
                integration=created.integration or self.integration,
                instance_token=created.token,
                adopted=False,
            )
        except AlreadyExistsError:
            # Ours from an earlier attempt whose answer was lost, or a manual retry of a
            # completed user: adopt it.
            found = await client.fetch_instance(name)
            if found is None:
                raise TransientError(
                    f"instance {name} is reported in use but not listed (a delete may still "
                    "be in progress)",
                    operation="fetch_instance",
                ) from None
            report("adopted", {"instance": name, "instance_id": found.instance_id})
            result = Provisioned(
                instance_name=name,
                instance_id=found.instance_id,
                integration=found.integration or self.integration,
                instance_token=found.token,
                adopted=True,
            )
        # Creation stores the webhook without validating it and ignores `enabled`; the set
        # endpoint validates and upserts, and its answer is the stored row we verify.
        state = await client.set_webhook(name, self.webhook)
        if not state.matches(self.webhook):
            raise InvalidResponseError(
                f"webhook of {name} does not match after set (url or events differ)",
                operation="set_webhook",
            )
        report("webhook", {"instance": name, "url": state.url, "events": len(state.events)})
        return result


class CreationJob:
    """The creation kind's handler: provision, then complete through the batcher."""

    def __init__(self, provisioner: Provisioner,
                 completions: CompletionBatcher[InstanceRecord]) -> None:
        self.provisioner = provisioner
        self.completions = completions

    async def attempt(self, entry: ClaimedEntry, report: StepReporter) -> Provisioned:
        return await self.provisioner.provision(entry.user_id, report, entry.server)

    async def complete(self, entry: ClaimedEntry, result: Provisioned) -> float | None:
        # No register_secret(token) per entry: it recompiled one regex of every token ever
        # seen (O(n) per entry, unbounded memory); tokens are never logged, and the client
        # redacts them from its errors. (bench: issue 7)
        record = InstanceRecord(
            instance_name=result.instance_name,
            instance_id=result.instance_id,
            integration=result.integration,
            instance_token=result.instance_token,
        )
        return await self.completions.complete(entry, record)

    def describe(self, result: Provisioned) -> dict[str, object]:
        return {"instance": result.instance_name, "adopted": result.adopted}


def creation_kind(store: CreationStore, provisioner: Provisioner, webhook_url: str,
                  webhook_events: list[str], placer: Placer | None = None) -> JobKind:
    """The creation queue as a kind of job: its store, its handler, its batched completion,
    and the placement of a new entry on a server before its first create call."""
    batcher: CompletionBatcher[InstanceRecord] = CompletionBatcher(
        lambda done: store.complete_many(done, webhook_url, webhook_events),
        write_and_claim=lambda done, ask: store.complete_many_and_claim(
            done, webhook_url, webhook_events, ask.limit, ask.paused))
    return JobKind(name="creation", action="provisioning", store=store,
                   handler=CreationJob(provisioner, batcher),
                   placer=None if placer is None else placer.server_for,
                   completions=batcher)
