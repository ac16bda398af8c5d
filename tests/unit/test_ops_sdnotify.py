"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.ops.sdnotify import SystemdNotifier

pytestmark = pytest.mark.unit


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path is limited to 108 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    path = short_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_a_path_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    assert _recv(sock) == "READY=1"
    assert notifier.watchdog() is True
    assert _recv(sock) == "WATCHDOG=1"
    assert notifier.status("claiming\n3 in flight") is True
    assert _recv(sock) == "STATUS=claiming 3 in flight"
    assert notifier.stopping() is True
    assert _recv(sock) == "STOPPING=1"
    assert notifier.ready("listening") is True
    assert _recv(sock) == "READY=1\nSTATUS=listening"
    assert notifier.extend_timeout(1.5) is True
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=1500000"
    notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    name = f"evl-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready() is True
        assert _recv(sock) == "READY=1"
        assert notifier.watchdog() is True
        assert _recv(sock) == "WATCHDOG=1"
        notifier.close()
    finally:
        sock.close()


def test_no_notify_socket_is_a_silent_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False


def test_reads_the_process_environment_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = SystemdNotifier()
    assert notifier.ready() is True
    assert _recv(sock) == "READY=1"
    notifier.close()


def test_unsupported_address_disables_notifications() -> None:
    assert not SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not SystemdNotifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_send_failure_never_raises_and_recovers(short_dir: Path) -> None:
    path = short_dir / "gone"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready() is False  # nobody listening: ENOENT, swallowed

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        assert notifier.watchdog() is True  # the socket is reopened on the next call
        assert _recv(sock) == "WATCHDOG=1"
    finally:
        sock.close()
        notifier.close()


def test_a_full_receiver_queue_does_not_block(receiver: tuple[socket.socket, str]) -> None:
    # systemd slow to drain its queue must never stall the event loop: sends are
    # non-blocking and a ping that does not fit is dropped.
    _, path = receiver
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    started = time.monotonic()
    results = [notifier.watchdog() for _ in range(5000)]
    assert time.monotonic() - started < 3
    assert True in results
    assert False in results
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OWN"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OTHER"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(
    env: dict[str, str], expected: float | None
) -> None:
    pid = env.get("WATCHDOG_PID")
    if pid == "OWN":
        env = {**env, "WATCHDOG_PID": str(os.getpid())}
    elif pid == "OTHER":
        env = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(env).watchdog_interval_s() == expected
