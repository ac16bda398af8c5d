"""sd_notify(3) over NOTIFY_SOCKET, without libsystemd.

Why our own: the protocol is one datagram of `KEY=VALUE` lines to a Unix socket, and a
dependency (or ctypes on libsystemd) is more to audit than these lines. Why it never
raises: a lost READY or WATCHDOG ping is systemd's business to time out on; crashing the
service over a notification would be worse than the missed notification.

The socket is non-blocking: the calls happen on the event loop, which must not stall if
systemd is slow to drain its queue (a dropped ping is logged at debug).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from listener.text import one_line

__all__ = ["SystemdNotifier"]

_log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends READY/WATCHDOG/STOPPING/STATUS to systemd; a no-op when NOTIFY_SOCKET is unset.

    `env` defaults to the process environment, read once at construction.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        source = os.environ if env is None else env
        self._address = self._parse_address(source.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = source.get("WATCHDOG_USEC")
        self._watchdog_pid = source.get("WATCHDOG_PID")
        self._socket: socket.socket | None = None

    @staticmethod
    def _parse_address(raw: str) -> str | bytes | None:
        """A path, or an abstract socket given as '@name' (kernel name: NUL + name)."""
        if not raw:
            return None
        if raw.startswith("@"):
            return b"\0" + raw[1:].encode()
        if raw.startswith("/"):
            return raw
        # vsock addresses (vsock:CID:PORT) are for VMs' own init; not ours to support.
        _log.debug("NOTIFY_SOCKET %r is not a Unix socket address; notifications disabled", raw)
        return None

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured (i.e. running under Type=notify)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines in one datagram; True when sent, False otherwise."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(payload, self._address)
        except OSError as error:
            _log.debug("sd_notify %s failed: %s", assignments[0].split("=", 1)[0], error)
            self.close()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup finished (LISTEN active and the first sweep done)."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={one_line(status, None)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the live loop is still turning; send every `watchdog_interval_s()`."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun (draining in-flight work)."""
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", f"STATUS={one_line(status, None)}")

    def status(self, text: str) -> bool:
        """STATUS=...: the one line `systemctl status` shows."""
        return self.notify(f"STATUS={one_line(text, None)}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for more time during a slow start or stop."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WATCHDOG_USEC, or None when no watchdog is ours.

        Half, as sd_watchdog_enabled(3) recommends, so one late ping is not fatal.
        WATCHDOG_PID names the process the watchdog is meant for; if it is set and is not
        us (a child that inherited the environment), we must not ping.
        """
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2_000_000

    def close(self) -> None:
        """Release the socket (it is reopened on the next notification)."""
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None
