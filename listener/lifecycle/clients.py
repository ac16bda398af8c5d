"""One Evolution API client per configured server, looked up by the server an entry or an
instance row records (SPEC §10). Every path that talks to an instance goes through here, so
it reaches the server the instance lives on, never another one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from listener.evolution.client import EvolutionClient
from listener.policy import UnknownServerError


class ServerClients(Mapping[str, EvolutionClient]):
    """name -> client; started and closed together."""

    def __init__(self, clients: Mapping[str, EvolutionClient]) -> None:
        if not clients:
            raise ValueError("at least one Evolution API server")
        self._clients = dict(clients)

    def client_for(self, server: str) -> EvolutionClient:
        """The client of `server`; UnknownServerError when the file no longer lists it."""
        client = self._clients.get(server)
        if client is None:
            raise UnknownServerError(server)
        return client

    @property
    def first(self) -> EvolutionClient:
        """The first configured server's client (single-server code paths)."""
        return next(iter(self._clients.values()))

    def __getitem__(self, server: str) -> EvolutionClient:
        return self._clients[server]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        for client in self._clients.values():
            await client.start()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
