"""Run the service the way an operator does (its own process), or in-process for speed.

`ServiceProcess` starts `python -m listener run` with an environment, waits for /readyz, and
stops it with a signal; its whole output is kept so tests can grep it (e.g. for secrets).
`InProcessService` runs `listener.service.Service` as an asyncio task in the test's loop:
several of them are several replicas against one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from listener.config import Settings, load_settings
from listener.dev import process
from listener.dev.process import ServiceProcess
from listener.service import Service

ROOT = Path(__file__).resolve().parents[1]


# Quick timeouts and retries, so failure paths finish within a test's time.
TEST_TUNING = {
    "LISTENER_HTTP_TIMEOUT_S": "2",
    "LISTENER_LEASE_S": "10",
    "LISTENER_RETRY_BASE_MS": "50",
    "LISTENER_SHUTDOWN_GRACE_S": "5",
}


def service_env(
    dsn: str, api_base_url: str, api_key: str, *, metrics_port: int | None = None,
    **overrides: Any,
) -> dict[str, str]:
    """The shared builder (listener/dev/process.py) with the tests' quick tuning."""
    return process.service_env(
        dsn, api_base_url, api_key, metrics_port=metrics_port, **{**TEST_TUNING, **overrides}
    )


def settings_from(env: Mapping[str, str]) -> Settings:
    return load_settings(Settings, dict(env))


class InProcessService:
    """A replica inside the test's event loop."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.settings = settings_from(env)
        self.service = Service(self.settings)
        self.task: asyncio.Task[int] | None = None

    async def start(self, wait_ready: bool = True) -> InProcessService:
        self.task = asyncio.create_task(self.service.run())
        if wait_ready:
            await self.wait_ready()
        return self

    async def wait_ready(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("service exited before it was ready")
            ready = self.service.readiness()[0]
            if ready:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"service not ready: {self.service.readiness()[1]}")

    async def stop(self) -> int:
        self.service.request_stop("test")
        assert self.task is not None
        return await asyncio.wait_for(self.task, 30)


@contextlib.contextmanager
def service_process(env: Mapping[str, str], **kwargs: Any) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(env, cwd=ROOT, **kwargs)
    try:
        yield proc
    finally:
        proc.close()


# --- database helpers ------------------------------------------------------------------------


def signup(dsn: str, count: int = 1) -> list[uuid.UUID]:
    """Insert profiles (each its own committed signup); returns their ids."""
    users = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for user_id in users:
            conn.execute("INSERT INTO profiles (id) VALUES (%s)", (user_id,))
    return users


def queue_rows(dsn: str) -> dict[uuid.UUID, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT user_id, status, retry_count, error_message, processed_at, attempts, "
            "lease_owner, reclaim_count FROM evolution_instance_creation_queue"
        )
        names = [c.name for c in cursor.description or []]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


def all_in_status(dsn: str, users: Sequence[uuid.UUID], status: str = "completed") -> bool:
    """Every user's queue row is in `status` (one query: tests poll it while an in-process
    service shares their event loop)."""
    rows = queue_rows(dsn)
    return all(rows.get(u, {}).get("status") == status for u in users)


def instance_rows(dsn: str) -> dict[uuid.UUID, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT user_id, instance_name, instance_id, integration, webhook_url, "
            "webhook_events, instance_token FROM evolution_instances"
        )
        names = [c.name for c in cursor.description or []]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


async def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> None:
    """Poll `predicate` (sync or async) until true; bounded in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


def wait_until_sync(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)
