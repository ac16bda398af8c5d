"""Run the service the way an operator does (its own process), or in-process for speed.

`ServiceProcess` starts `python -m listener run` with an environment, waits for /readyz, and
stops it with a signal; its whole output is kept so tests can grep it (e.g. for secrets).
`InProcessService` runs `listener.service.Service` as an asyncio task in the test's loop:
several of them are several replicas against one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

from listener.config import Settings, load_settings
from listener.dev.embedded_pg import free_port
from listener.service import Service

ROOT = Path(__file__).resolve().parents[1]


def service_env(
    dsn: str, api_base_url: str, api_key: str, *, metrics_port: int | None = None,
    **overrides: Any,
) -> dict[str, str]:
    env = {
        "DATABASE_URL": dsn,
        "EVOLUTION_API_BASE_URL": api_base_url,
        "EVOLUTION_API_KEY": api_key,
        "SUPABASE_URL": "https://project-ref.supabase.co",
        "LISTENER_METRICS_ADDR": f"127.0.0.1:{metrics_port or free_port()}",
        "LISTENER_LOG_FORMAT": "json",
        "LISTENER_LOG_LEVEL": "INFO",
        "LISTENER_HTTP_TIMEOUT_S": "2",
        "LISTENER_LEASE_S": "10",
        "LISTENER_RETRY_BASE_MS": "50",
        "LISTENER_SHUTDOWN_GRACE_S": "5",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


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
            ready, _ = self.service.readiness()
            if ready:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"service not ready: {self.service.readiness()[1]}")

    async def stop(self) -> int:
        self.service.request_stop("test")
        assert self.task is not None
        return await asyncio.wait_for(self.task, 30)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class ServiceProcess:
    """`python -m listener run` in its own process, output captured to a file."""

    def __init__(self, env: Mapping[str, str], *, extra_env: Mapping[str, str] | None = None,
                 command: tuple[str, ...] = ("run",)) -> None:
        self.env = dict(env)
        full = {k: v for k, v in os.environ.items()
                if k not in ("TEST_DATABASE_URL", "NOTIFY_SOCKET")}
        full.update(self.env)
        full.update(extra_env or {})
        full["PYTHONUNBUFFERED"] = "1"
        self.output_path = Path(tempfile.mkstemp(prefix="listener-out-", suffix=".log")[1])
        self._out = self.output_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listener", *command],
            env=full, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        self.metrics_url = f"http://{self.env['LISTENER_METRICS_ADDR']}"
        self._final_output: str | None = None

    @property
    def output(self) -> str:
        if self._final_output is not None:
            return self._final_output
        self._out.flush()
        return self.output_path.read_text(errors="replace")

    def readyz(self) -> tuple[int, bytes]:
        return _get(f"{self.metrics_url}/readyz")

    def metrics(self) -> str:
        return _get(f"{self.metrics_url}/metrics")[1].decode()

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited ({self.proc.returncode}):\n{self.output}")
            with contextlib.suppress(OSError):
                if self.readyz()[0] == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"service not ready in {timeout_s}s:\n{self.output[-3000:]}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close()

    def close(self) -> None:
        """Kill if still running; keep the output in memory, remove the file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._final_output is None:
            self._out.close()
            self._final_output = self.output_path.read_text(errors="replace")
            self.output_path.unlink(missing_ok=True)


@contextlib.contextmanager
def service_process(env: Mapping[str, str], **kwargs: Any) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(env, **kwargs)
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
