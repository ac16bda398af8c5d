"""The LISTEN connection: wake the worker on a notification, survive every way it can die.

A notification is a hint, never the truth: the worker always re-reads the table. So this
module only has to (1) keep one autocommit connection LISTENing, (2) notice quickly when it
is gone, including a half-open TCP connection that never errors by itself (a probe query
with a deadline every few seconds, plus TCP keepalives), and (3) after every (re)connect ask
for a sweep, because notifications sent while disconnected are lost. It is also where the
replica's liveness lock lives (`listener.db.liveness`): one long-lived, probed session per
replica, taken before the connection is reported up, so the work loop (which claims only
while it is up) never holds rows the other replicas would take for a dead replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import psycopg

from listener.db import queries
from listener.db.liveness import try_liveness_lock
from listener.db.pool import KEEPALIVE_KWARGS
from listener.text import one_line

log = logging.getLogger("listener.wakeup")

@dataclass(frozen=True)
class QueueNotification:
    id: int
    user_id: uuid.UUID
    channel: str = ""  # the queue it came from (the worker marks that kind as due)


class MalformedNotification(ValueError):
    """A payload on our channel that is not {"id": <int>, "user_id": "<uuid>"}."""


def parse_notification(payload: str) -> QueueNotification:
    try:
        data = json.loads(payload)
    except ValueError:
        raise MalformedNotification("not JSON") from None
    if not isinstance(data, dict):
        raise MalformedNotification("not a JSON object")
    entry_id = data.get("id")
    if not isinstance(entry_id, int) or isinstance(entry_id, bool):
        raise MalformedNotification("'id' is not an integer")
    raw_user = data.get("user_id")
    if not isinstance(raw_user, str):
        raise MalformedNotification("'user_id' is not a string")
    try:
        user_id = uuid.UUID(raw_user)
    except ValueError:
        raise MalformedNotification("'user_id' is not a UUID") from None
    return QueueNotification(id=entry_id, user_id=user_id)


def reconnect_delay_s(failures: int, *, base_s: float = 0.2, cap_s: float = 10.0,
                      rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff, so replicas do not reconnect in lockstep."""
    ceiling = min(cap_s, base_s * (2 ** max(0, failures - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def _describe(error: BaseException) -> str:
    """The type says more than the text for connection errors ("OSError: timed out")."""
    return one_line(f"{type(error).__name__}: {error}", 300)


class ListenConnection:
    """Owns the LISTEN connection; calls `on_notify` per valid notification and
    `on_connected` after every successful (re)connect. With `owner`, the connection also
    holds that owner's liveness lock, taken before it reports connected."""

    def __init__(
        self,
        dsn: str,
        *,
        on_notify: Callable[[QueueNotification], None],
        on_connected: Callable[[bool], None],
        on_state: Callable[[bool], None] = lambda connected: None,
        channels: Sequence[str] = (queries.CHANNEL,),
        probe_interval_s: float = 2.0,
        probe_timeout_s: float = 3.0,
        connect_timeout_s: float = 10.0,
        owner: str | None = None,
    ) -> None:
        self._dsn = dsn
        self._owner = owner
        self.lock_held = False
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._on_state = on_state
        self.channels = tuple(channels)
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.connected = False
        self.last_error: str | None = "not connected yet"
        self.connections = 0
        self._failures = 0

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        if not connected:
            self.lock_held = False  # it ended with the session
        self.connected = connected
        self.last_error = error
        self._on_state(connected)

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            try:
                conn = await asyncio.wait_for(
                    psycopg.AsyncConnection.connect(
                        self._dsn,
                        autocommit=True,
                        connect_timeout=max(1, int(self.connect_timeout_s)),
                        application_name="evolution-listener:listen",
                        **KEEPALIVE_KWARGS,
                    ),
                    self.connect_timeout_s + 1,
                )
            except (psycopg.Error, OSError, TimeoutError) as error:
                self._failures += 1
                self._set_connected(False, f"cannot connect: {_describe(error)}")
                delay = reconnect_delay_s(self._failures)
                log.warning(
                    "LISTEN connection failed; retrying",
                    extra={"error": self.last_error, "retry_in_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                continue
            try:
                await self._serve(conn)
            except Exception as error:  # even a bug here must not leave "connected" claimed
                self._failures += 1
                if isinstance(error, psycopg.Error | OSError | TimeoutError):
                    self._set_connected(False, f"connection lost: {_describe(error)}")
                    log.warning("LISTEN connection lost; reconnecting",
                                extra={"error": self.last_error})
                else:
                    self._set_connected(False, f"listener failed: {_describe(error)}")
                    log.error("LISTEN loop failed; reconnecting",
                              extra={"error": self.last_error})
                await _close_quietly(conn)
                await asyncio.sleep(reconnect_delay_s(self._failures))
            except BaseException:
                await _close_quietly(conn)
                raise

    async def _serve(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        await self._take_lock(conn)
        for channel in self.channels:
            await asyncio.wait_for(conn.execute(queries.LISTEN_ON[channel]), self.probe_timeout_s)
        reconnected = self.connections > 0
        self.connections += 1
        self._failures = 0
        self._set_connected(True)
        log.info("listening", extra={"channel": ",".join(self.channels),
                                     "reconnect": reconnected})
        self._on_connected(reconnected)
        while True:
            async for note in conn.notifies(timeout=self.probe_interval_s):
                self._dispatch(note)
            # No notification for a while: prove the connection is alive, within a deadline.
            await asyncio.wait_for(conn.execute(queries.PROBE), self.probe_timeout_s)
            if self._owner is not None and not self.lock_held:
                await self._take_lock(conn)

    async def _take_lock(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Not granted: the key is held elsewhere (an older session of ours the server has
        not dropped yet, or a hash collision), so our rows still look alive; try again at
        every probe."""
        if self._owner is None:
            return
        was_refused = self.connected and not self.lock_held
        self.lock_held = await asyncio.wait_for(try_liveness_lock(conn, self._owner),
                                                self.probe_timeout_s)
        if not self.lock_held and not was_refused:
            log.warning("liveness lock key held by another session; retrying at every probe",
                        extra={"replica": self._owner})
        elif self.lock_held and was_refused:
            log.info("liveness lock taken", extra={"replica": self._owner})

    def _dispatch(self, note: psycopg.Notify) -> None:
        if note.channel not in self.channels:
            return
        try:
            parsed = parse_notification(note.payload)
        except MalformedNotification as error:
            log.warning(
                "ignored malformed notification",
                extra={"channel": note.channel, "reason": str(error),
                       "payload": note.payload[:200]},
            )
            return
        self._on_notify(replace(parsed, channel=note.channel))


async def _close_quietly(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
        await asyncio.wait_for(conn.close(), 2.0)
