"""The service as an operator runs it, in its own process: the one launcher and the one
environment builder that the demo, the tests and the benchmarks share.

Why one: the three used to start `listener run` three ways (which variables leak in from the
caller, how it is stopped, where its output goes) and drifted; a fix to the stop sequence
or the readiness wait now lands everywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from listener.dev.embedded_pg import free_port

__all__ = ["ServiceProcess", "http_get", "service_env"]

# Configuration of the caller's own environment that must not reach a service we start:
# the service gets exactly the configuration it is given.
_NOT_INHERITED_PREFIXES = ("LISTENER_", "EVOLUTION_", "WEBHOOK_")
_NOT_INHERITED = frozenset(
    {"DATABASE_URL", "SUPABASE_URL", "NOTIFY_SOCKET", "TEST_DATABASE_URL", "WATCHDOG_USEC"}
)


def service_env(
    dsn: str,
    api_base_url: str,
    api_key: str,
    *,
    metrics_port: int | None = None,
    supabase_url: str = "https://project-ref.supabase.co",
    **overrides: object,
) -> dict[str, str]:
    """A complete service configuration: the database, the Evolution API, a free loopback
    metrics port, JSON logs; `overrides` (variable=value) win."""
    env = {
        "DATABASE_URL": dsn,
        "EVOLUTION_API_BASE_URL": api_base_url,
        "EVOLUTION_API_KEY": api_key,
        "SUPABASE_URL": supabase_url,
        "LISTENER_METRICS_ADDR": f"127.0.0.1:{metrics_port or free_port()}",
        "LISTENER_LOG_FORMAT": "json",
        "LISTENER_LOG_LEVEL": "INFO",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET to a loopback URL; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def _inherited() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _NOT_INHERITED and not k.startswith(_NOT_INHERITED_PREFIXES)
    }


class ServiceProcess:
    """`listener run` (or another subcommand) in its own process, output to a file.

    `program`: how to start the CLI (default this interpreter's `-m listener`; the bench
    passes the console script). `new_session`: Ctrl-C in the terminal reaches only the
    caller, which relays it as SIGTERM (the demo). The output file is removed by `close()`
    (its text is kept in memory) unless `log_path` was given.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        command: Sequence[str] = ("run",),
        program: Sequence[str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
        name: str = "service",
    ) -> None:
        self.name = name
        self.env = dict(env)
        full = _inherited()
        full.update(self.env)
        full["PYTHONUNBUFFERED"] = "1"
        self._own_log = log_path is None
        if log_path is None:
            handle, raw = tempfile.mkstemp(prefix=f"listener-{name}-", suffix=".log")
            os.close(handle)
            log_path = Path(raw)
        self.log_path = log_path
        self._out = log_path.open("wb")
        self.metrics_url = f"http://{self.env['LISTENER_METRICS_ADDR']}"
        self._final_output: str | None = None
        argv = [*(program or (sys.executable, "-m", "listener")), *command]
        self.proc = subprocess.Popen(
            argv,
            env=full,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=new_session,
        )

    # -- reading -----------------------------------------------------------------------

    @property
    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        if self._final_output is not None:
            return self._final_output
        with contextlib.suppress(ValueError):
            self._out.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def readyz(self) -> tuple[int, bytes]:
        return http_get(f"{self.metrics_url}/readyz", 2.0)

    def metrics(self) -> str:
        return http_get(f"{self.metrics_url}/metrics", 2.0)[1].decode()

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of one metric's samples (with `labels` in the line, when given); 0 when
        absent or when /metrics does not answer 200."""
        status, body = http_get(f"{self.metrics_url}/metrics", 5.0)
        if status != 200:
            return 0.0
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and (not labels or labels in line):
                head, _, value = line.rpartition(" ")
                if head.split("{", 1)[0] == name:
                    total += float(value)
        return total

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Until /readyz answers 200; AssertionError (with the output's tail) if the process
        exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.output[-3000:]}"
                )
            with contextlib.suppress(OSError):
                if self.readyz()[0] == 200:
                    return
            time.sleep(0.02)
        raise AssertionError(f"{self.name} not ready in {timeout_s}s:\n{self.output[-3000:]}")

    # -- stopping ----------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the graceful drain), bounded; SIGKILL if it does not go. Exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close()

    def close(self) -> None:
        """Kill if still running; keep the output in memory; remove our own log file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._final_output is None:
            self._out.close()
            try:
                self._final_output = self.log_path.read_text(errors="replace")
            except OSError:
                self._final_output = ""
            if self._own_log:
                self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
