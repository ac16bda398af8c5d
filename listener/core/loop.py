"""The loop: wait for the earliest wake-up, claim up to free capacity, dispatch, repeat.

Wake-ups: a notification, a finished task (capacity freed, maybe a retry scheduled), the next
due row read from the table (a retry or a lease to rescue, so every replica knows), the
sweep interval, a reconnect, a breaker closing. The table is the truth; the loop always
claims from it. It claims every kind of job in turn under one capacity bound; what an
attempt does and how it settles is `attempt.py`, the back-off `breaker.py`, the end of work
`shutdown.py`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from listener.core.ahead import ClaimedAhead, Held, max_wait_s
from listener.core.attempt import AttemptConfig, AttemptRunner
from listener.core.batcher import ClaimAsk
from listener.core.breaker import Breakers, Probe
from listener.core.jobs import JobKind
from listener.core.observer import WorkObserver
from listener.core.outcome import Counts, Outcome
from listener.core.settle import DB_ERRORS, DatabaseHealth
from listener.core.shutdown import finish_or_release, release_together
from listener.db.store import ClaimedEntry
from listener.fleet.servers import DEFAULT_SERVER
from listener.text import one_line

log = logging.getLogger("listener.worker")

MIN_IDLE_WAIT_S = 0.02
LOCKED_ROW_BACKOFF_S = 0.05  # doubling to 1.6 s while due rows stay locked elsewhere
LOCKED_ROW_MAX_DOUBLINGS = 6
STALL_LIMIT_S = 60.0  # pool wait (10 s) + tcp_user_timeout (10 s) end a healthy claim sooner
DB_ERROR_PAUSE_S = 1.0
# While capacity is the limit, a finished task frees a slot. Claiming for every freed slot
# costs a statement per small clump of finished work (a drain at concurrency 16 with an
# instant API sent 0.2 claims per entry); waiting until half the slots are free, or
# REFILL_DELAY_S after the first one freed, claims in bigger batches (bench: 0.13 claims and
# 0.18 completions per entry instead of 0.20 and 0.21). Only while attempts are short: when
# they take REFILL_SLOW_ATTEMPT_S or more (an API answering in tens of ms), a statement is
# cheap next to an idle slot (a 50 ms drain lost about 9 % with the wait), so the loop
# claims at once. Not capacity-bound (steady load), nothing waits.
REFILL_SHARE = 0.5
REFILL_DELAY_S = 0.002
REFILL_SLOW_ATTEMPT_S = 0.05
ATTEMPT_EWMA_WEIGHT = 0.1  # of the newest attempt in the running mean of attempt durations

# While a drain refills through completions, each riding claim also takes up to this share
# of the concurrency ahead, into a local queue: the slots the next batch hands over start
# at once from it, instead of idling for that batch's statement (its commit included). The
# entries wait milliseconds, hold a lease like any claim, and go back (no retry spent) when
# they would wait too long or should not start at all (ahead.py). Only while attempts are
# short: a slow API leaves time for a claim statement between two freed slots.
CLAIM_AHEAD_SHARE = 0.5

# Rows whose own NOTIFY the loop expects (see `_due_again`); beyond this many (notifications
# lost in a reconnect), it forgets them: the worst case is a kind marked due for nothing.
OWN_SETTLES_KEPT = 4096

# A task's key while it is in flight: the same entry claimed again is another claim.
_TaskKey = tuple[str, int, int]


def _key(kind: JobKind, entry: ClaimedEntry) -> _TaskKey:
    return kind.name, entry.id, entry.claim_seq


def refill_threshold(concurrency: int) -> int:
    """Free slots that are worth a claim statement at once while capacity is the limit."""
    return max(1, math.ceil(concurrency * REFILL_SHARE))


@dataclass(frozen=True)
class LoopConfig:
    concurrency: int
    sweep_interval_s: float
    shutdown_grace_s: float


class ClaimLoop:
    """One replica's processing loop over one or more kinds of job. `run()` returns after a
    graceful shutdown; `drain()` processes what is due once and returns. With `alive`,
    `run()` claims only while it is set (the replica's liveness lock is held): rows claimed
    without it would be rescued from under it by the other replicas. Set it, then `wake()`."""

    def __init__(self, config: LoopConfig, kinds: Sequence[JobKind], attempt: AttemptConfig,
                 probe_for: Callable[[str], Probe], observer: WorkObserver,
                 alive: asyncio.Event | None = None,
                 servers: Sequence[str] = (DEFAULT_SERVER,),
                 kind_of_channel: Mapping[str, str] | None = None) -> None:
        if not kinds:
            raise ValueError("at least one kind of job")
        self.config = config
        self.kinds = tuple(kinds)
        self.observer = observer
        self.health = DatabaseHealth()
        self.breakers = Breakers(probe_for, observer, on_recovered=self.wake, servers=servers)
        self.attempts = AttemptRunner(attempt, self.breakers, self.health, observer,
                                      due_again=self._due_again)
        self.first_sweep_done = asyncio.Event()
        self._alive = alive
        self._wake = asyncio.Event()
        self._sweep_requested = True
        self._capacity_bound = False
        self._refill_at = refill_threshold(config.concurrency)
        self._refill_timer: asyncio.TimerHandle | None = None
        self._dispatched_at: dict[asyncio.Task[object], float] = {}
        self._attempt_s = 0.0  # running mean, dispatch to done
        self._draining = False
        self._locked_waits: dict[str, int] = {kind.name: 0 for kind in self.kinds}
        self._inflight: dict[asyncio.Task[object], tuple[JobKind, ClaimedEntry]] = {}
        self._inflight_keys: set[_TaskKey] = set()
        self._busy_since: float | None = None
        self._stop: asyncio.Event | None = None  # run()'s; None outside it
        # Claims riding on completion batches (see batcher.py): slots handed over by tasks
        # whose completion carries a claim, and slots held for claims not yet answered.
        self._handed: set[_TaskKey] = set()
        self._riding = 0
        self._ready = ClaimedAhead(max_wait_s(attempt.lease_s))
        self._giving_back: set[asyncio.Task[list[JobKind]]] = set()
        self._ready_timer: asyncio.TimerHandle | None = None  # gives back what waits too long
        self._ahead = max(1, math.ceil(config.concurrency * CLAIM_AHEAD_SHARE))
        # Kinds with work due beyond what was claimed: their last claim filled its share,
        # their queue notified, or their next row's time came while every slot was taken.
        self._open_kinds: set[str] = set()
        self._due_at: dict[str, float] = {}  # monotonic time each kind's next row is due
        self._kind_of_channel = dict(kind_of_channel or {})
        self._notes: dict[str, int] = {kind.name: 0 for kind in self.kinds}  # per kind
        # Rows this replica just gave a new due time: their own NOTIFY says nothing new.
        self._own_settles: set[tuple[str, int]] = set()
        self._first_kind = 0  # rounds start at each kind in turn
        self._claiming = 0  # slots a round's claim statement may fill when it answers
        self._stopping = False  # set by _shutdown, also when run() ends by an exception
        for kind in self.kinds:
            if kind.completions is not None and kind.completions.can_claim:
                kind.completions.refill = _KindRefill(self, kind)

    # --- signals from outside and state for readiness ---------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def request_sweep(self) -> None:
        """After a (re)connect: notifications may have been lost; look at the table."""
        self._sweep_requested = True
        self._wake.set()

    @property
    def counts(self) -> Counts:
        return self.attempts.counts

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _stopping_now(self) -> bool:
        return self._stopping or self._stop is None or self._stop.is_set()

    def _busy(self) -> int:
        """Slots taken: tasks in flight, less those handed to a riding claim, plus the
        slots held for claims not yet answered (riding ones, and a round's)."""
        return len(self._inflight) - len(self._handed) + self._riding + self._claiming

    @property
    def db_error(self) -> str | None:
        return self.health.error

    def backoff_reason(self) -> str | None:
        return self.breakers.open_reason()

    def stalled(self, limit_s: float = STALL_LIMIT_S) -> bool:
        """True when a claim round has been stuck for longer than `limit_s` (a hung query
        that no timeout ended): the watchdog stops pinging and systemd restarts us."""
        busy_since = self._busy_since
        return busy_since is not None and time.monotonic() - busy_since > limit_s

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        next_sweep = time.monotonic()
        try:
            while not stop.is_set():
                self._wake.clear()
                self._cancel_refill_timer()
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep_requested = True
                if self._alive is not None and not self._alive.is_set():
                    self._give_back(self._ready.take_all())  # the rescue may take them
                    await self._wait(stop, self.config.sweep_interval_s)
                    continue
                blocked_s = self._blocked_s(now)
                if blocked_s > 0:
                    self._give_back(self._ready.take_all())  # leases would run out here
                    await self._wait(stop, min(blocked_s, self.config.sweep_interval_s))
                    continue
                self._busy_since = time.monotonic()
                try:
                    timeout = await self._claim_round()
                except DB_ERRORS as error:
                    self.health.failed(error)
                    await self._wait(stop, DB_ERROR_PAUSE_S)
                    continue
                finally:
                    self._busy_since = None
                if self._sweep_requested:
                    self._sweep_requested = False
                    self.observer.swept()
                    next_sweep = time.monotonic() + self.config.sweep_interval_s
                    self.first_sweep_done.set()
                timeout = min(timeout, max(0.0, next_sweep - time.monotonic()))
                await self._wait(stop, max(timeout, MIN_IDLE_WAIT_S))
        finally:
            await self._shutdown()

    def _blocked_s(self, now: float) -> float:
        """0 while some Evolution server can take work; else how long all of them hold."""
        return self.breakers.blocked_s(now)

    async def _claim_round(self) -> float:
        """Claim until nothing is due or capacity is full; return how long to sleep. Each
        kind still open in this round claims an even share of the free capacity, in turn,
        so one kind's backlog cannot starve another."""
        now = time.monotonic()
        paused = self.breakers.paused(now)  # their placed work waits there (SPEC §10)
        self._start_ready()
        wait_s = min(self.config.sweep_interval_s, self.breakers.resume_in_s(now))
        # Kinds known to have work due (notified, or their last claim filled its share) go
        # first, so a signup's claim never waits behind an empty queue's; among them each
        # round starts at the next kind: with one free slot at a time (slow attempts), the
        # one listed first would otherwise take every slot before the others' turn.
        start = self._first_kind = (self._first_kind + 1) % len(self.kinds)
        rotated = [*self.kinds[start:], *self.kinds[:start]]
        open_kinds = sorted(rotated, key=lambda kind: kind.name not in self._open_kinds)
        while open_kinds:
            share = max(1, math.ceil(
                (self.config.concurrency - self._busy()) / len(open_kinds)))
            for kind in list(open_kinds):
                free = self.config.concurrency - self._busy()
                if free <= 0:
                    self._capacity_bound = True  # a finishing task wakes us
                    self._mark_due_kinds(open_kinds, now)
                    return self._next_due_elsewhere_s(now)
                share = min(share, free)
                notes = self._notes[kind.name]
                self._claiming = share  # a riding claim answering meanwhile leaves these
                try:
                    entries, next_due_s = await kind.store.claim(share, paused)
                finally:
                    self._claiming = 0
                self.health.ok()
                for entry in entries:
                    self._dispatch(kind, entry)
                if len(entries) == share:
                    self._open_kinds.add(kind.name)
                    continue  # maybe more due: claim again while capacity lasts
                if self._notes[kind.name] == notes:  # else notified during the claim: due
                    self._open_kinds.discard(kind.name)
                open_kinds.remove(kind)
                kind_wait_s = self._kind_wait_s(kind, entries, next_due_s)
                self._due_at[kind.name] = now + kind_wait_s
                wait_s = min(wait_s, kind_wait_s)
        self._capacity_bound = False
        return wait_s

    def _mark_due_kinds(self, kinds: Sequence[JobKind], now: float) -> None:
        """A round found every slot taken before claiming `kinds`: those with work known
        to be due (their next row's time has come, or a sweep asks to look) stop the riding
        claims of others until a round with free slots gives them their share."""
        for kind in kinds:
            if self._sweep_requested or self._due_at.get(kind.name, now) <= now:
                self._open_kinds.add(kind.name)

    def _next_due_elsewhere_s(self, now: float) -> float:
        """Every slot taken: sleep until a finishing task wakes us, or until a kind not yet
        asking for its share has a row due (a deletion's retry during a creation drain),
        so the round then marks it."""
        later = [at - now for name, at in self._due_at.items()
                 if name not in self._open_kinds and at > now]
        return min([self.config.sweep_interval_s, *later])

    def _due_again(self, kind: JobKind, entry: ClaimedEntry, delay_s: float) -> None:
        """A settle gave `entry` of `kind` a new due time (a retry, a release); the NOTIFY
        its statement sent is ours, not news of work due now."""
        if len(self._own_settles) > OWN_SETTLES_KEPT:
            self._own_settles.clear()  # notifications lost while disconnected: start over
        self._own_settles.add((kind.name, entry.id))
        now = time.monotonic()
        known = self._due_at.get(kind.name, now)
        self._due_at[kind.name] = now + delay_s if known <= now else min(known, now + delay_s)
        self._wake.set()

    def notified(self, channel: str, entry_id: int | None = None) -> None:
        """A notification on a kind's queue: that kind has work due (a deletion during a
        creation drain must not wait for the drain's end), then wake. The NOTIFY of a row
        this replica just settled only wakes: its due time is known (`_due_again`)."""
        name = self._kind_of_channel.get(channel)
        if name is not None:
            if (name, entry_id) in self._own_settles:
                self._own_settles.discard((name, entry_id))
            else:
                self._notes[name] += 1
                self._open_kinds.add(name)
        self._wake.set()

    def _kind_wait_s(self, kind: JobKind, entries: list[ClaimedEntry],
                     next_due_s: float | None) -> float:
        if next_due_s is None:
            return self.config.sweep_interval_s
        if next_due_s <= 0 and not entries:
            # Due but not ours to take: locked by another replica's claim or an open
            # transaction. Back off instead of polling at the idle floor.
            waits = min(self._locked_waits[kind.name] + 1, LOCKED_ROW_MAX_DOUBLINGS)
            self._locked_waits[kind.name] = waits
            return float(LOCKED_ROW_BACKOFF_S * 2 ** (waits - 1))
        self._locked_waits[kind.name] = 0
        return max(0.0, next_due_s)

    async def _wait(self, stop: asyncio.Event, delay_s: float) -> None:
        if stop.is_set() or self._wake.is_set():
            return
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _dispatch(self, kind: JobKind, entry: ClaimedEntry) -> None:
        self.observer.claimed(kind.name)
        task: asyncio.Task[object] = asyncio.create_task(
            self.attempts.run(kind, entry), name=f"{kind.name}-{entry.user_id}")
        self._inflight[task] = (kind, entry)
        self._inflight_keys.add(_key(kind, entry))
        self._dispatched_at[task] = time.monotonic()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        handed = False
        held = self._inflight.pop(task, None)
        if held is not None:
            key = _key(*held)
            self._inflight_keys.discard(key)
            handed = key in self._handed
            self._handed.discard(key)
        dispatched_at = self._dispatched_at.pop(task, None)
        if dispatched_at is not None:
            self._attempt_s += ATTEMPT_EWMA_WEIGHT * (
                time.monotonic() - dispatched_at - self._attempt_s)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task crashed", extra={"error": one_line(task.exception())})  # type: ignore[arg-type]
        # Freed capacity matters only if the last claim was limited by it (more may be due);
        # otherwise waking would only cost a claim that finds nothing.
        if self._draining:
            self._wake.set()
        elif self._capacity_bound and not handed:  # a handed slot was refilled already
            self._start_ready()
            if self._busy() < self.config.concurrency:
                self._slot_freed()

    def _slot_freed(self) -> None:
        """Capacity was the limit: claim now if enough slots are free, else a little later
        (see REFILL_SHARE)."""
        if self._attempt_s >= REFILL_SLOW_ATTEMPT_S \
                or self.config.concurrency - self._busy() >= self._refill_at:
            self._wake.set()
        elif self._refill_timer is None:
            self._refill_timer = asyncio.get_running_loop().call_later(
                REFILL_DELAY_S, self._wake.set)

    def _cancel_refill_timer(self) -> None:
        if self._refill_timer is not None:
            self._refill_timer.cancel()
            self._refill_timer = None

    # --- claims riding on completion batches ------------------------------------------------

    def _ask_riding_claim(self, kind: JobKind, batch: Sequence[ClaimedEntry]
                          ) -> ClaimAsk | None:
        """Only while `run()` is capacity-bound on this kind alone (no other kind waits for
        its fair share), claiming is allowed (alive, some server open), and no claim round
        is in progress (its claim would not see this one's slots)."""
        if self._stopping_now() or self._draining or not self._capacity_bound \
                or self._busy_since is not None \
                or (self._alive is not None and not self._alive.is_set()) \
                or self._open_kinds - {kind.name}:
            return None
        now = time.monotonic()
        if self.breakers.blocked_s(now) > 0:
            return None
        paused = self.breakers.paused(now)  # before any state changes: it may raise
        handed = tuple(entry for entry in batch if _key(kind, entry) in self._inflight_keys
                       and _key(kind, entry) not in self._handed)
        self._handed.update(_key(kind, entry) for entry in handed)
        self._start_ready()  # the handed slots first go to what was claimed ahead
        slots = max(0, self.config.concurrency - self._busy())
        ahead = self._ahead if self._attempt_s < REFILL_SLOW_ATTEMPT_S else 0
        limit = slots + ahead - len(self._ready)
        if limit <= 0:
            return None
        self._riding += slots
        return ClaimAsk(limit=limit, paused=paused, slots=slots, handed=handed)

    async def _take_riding_claim(self, kind: JobKind, ask: ClaimAsk,
                                 claimed: list[ClaimedEntry], next_due_s: float | None) -> None:
        self._riding -= ask.slots
        self.health.ok()
        if self._stopping_now():
            # Shutting down: nothing new starts; no retry spent, due at once elsewhere.
            await release_together([(kind, entry) for entry in claimed])
            return
        self._ready.put(kind, claimed, time.monotonic())
        self._start_ready()
        if self._ready_timer is None:
            self._arm_ready_timer()
        if len(claimed) < ask.limit:
            # Nothing more due now: a normal round reads when the next row is due.
            self._open_kinds.discard(kind.name)
            self._wake.set()

    def _cancel_riding_claim(self, kind: JobKind, ask: ClaimAsk) -> None:
        self._riding -= ask.slots
        for entry in ask.handed:
            self._handed.discard(_key(kind, entry))

    def _start_ready(self) -> None:
        """Dispatch entries claimed ahead into the free slots while claiming is allowed;
        give back those that waited too long or sit on a paused server (ahead.py). Another
        kind waiting for its share gets it once these few have started (at most the ahead
        share): no riding claim adds more meanwhile."""
        if not self._ready or self._stopping_now():
            return  # stopping: the shutdown gives them back
        now = time.monotonic()
        if (self._alive is not None and not self._alive.is_set()) \
                or self.breakers.blocked_s(now) > 0:
            self._give_back(self._ready.take_all())
            return
        taken = self._ready.take(now, self.config.concurrency - self._busy(),
                                 self.breakers.paused(now))
        self._give_back(taken.give_back)
        for kind, entry in taken.start:
            self._dispatch(kind, entry)

    def _ready_timer_fired(self) -> None:
        """No slot freed for a while (attempts hang on a slow server): what waits past its
        bound goes back now rather than when a slot finally frees."""
        self._ready_timer = None
        self._start_ready()
        self._arm_ready_timer()

    def _arm_ready_timer(self) -> None:
        """Fire when the oldest entry claimed ahead reaches its bound."""
        expiry = self._ready.next_expiry()
        if expiry is not None and not self._stopping_now():
            self._ready_timer = asyncio.get_running_loop().call_later(
                max(0.0, expiry - time.monotonic()), self._ready_timer_fired)

    def _give_back(self, entries: list[Held]) -> None:
        """Release entries that were claimed ahead and never started, in the background;
        they were never counted as claimed (that happens at dispatch), so no outcome."""
        if not entries:
            return
        task = asyncio.create_task(release_together(entries), name="give-back")
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)
        if not self._draining:
            self._wake.set()  # due at once: a round may take them back with fair shares

    async def _release_ready(self) -> None:
        """Shutdown: entries claimed ahead and never started go back, no retry spent; so
        do the give-backs still in flight."""
        if self._ready_timer is not None:
            self._ready_timer.cancel()
            self._ready_timer = None
        self._give_back(self._ready.take_all())
        if self._giving_back:
            await asyncio.gather(*self._giving_back, return_exceptions=True)

    # --- one entry, and everything due once -------------------------------------------------

    async def process_entry(self, kind: JobKind, entry: ClaimedEntry,
                            echo: Callable[[str], None] | None = None) -> Outcome:
        """One already-claimed entry (the `provision` command), printing steps."""
        return await self.attempts.run(kind, entry, echo)

    async def drain(self) -> Counts:
        """Process every entry due now, once, then return (the `drain` command)."""
        self._draining = True
        while True:
            self._wake.clear()
            now = time.monotonic()
            claimed = False
            all_blocked = self.breakers.blocked_s(now) > 0
            paused = self.breakers.paused(now)
            for kind in [] if all_blocked else self.kinds:
                free = self.config.concurrency - len(self._inflight)
                if free > 0:
                    entries, _next_due = await kind.store.claim(free, paused)
                    for entry in entries:
                        self._dispatch(kind, entry)
                    claimed = claimed or bool(entries)
            if not self._inflight and (all_blocked or not claimed):
                break
            if self._inflight:
                await self._wake.wait()
        self.breakers.stop_probing()
        return self.counts

    # --- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Stop claiming (done: the loop has exited), let in-flight work finish within the
        grace, release what did not finish back to pending with no retry spent."""
        self._stopping = True  # also when run() ended by an exception: nothing new starts
        self._cancel_refill_timer()
        self.breakers.stop_probing()
        # Together: what was claimed ahead goes back while in-flight work finishes, so the
        # whole shutdown stays within the grace plus one release bound.
        _, released = await asyncio.gather(
            self._release_ready(),
            finish_or_release(self._inflight, self.config.shutdown_grace_s))
        for kind in released:
            self.attempts.record(kind, Outcome.RELEASED)
        self.breakers.cancel()


class _KindRefill:
    """One kind's `Refill` (batcher.py), answered by its loop."""

    def __init__(self, loop: ClaimLoop, kind: JobKind) -> None:
        self._loop = loop
        self._kind = kind

    def ask(self, batch: Sequence[ClaimedEntry]) -> ClaimAsk | None:
        return self._loop._ask_riding_claim(self._kind, batch)

    async def take(self, ask: ClaimAsk, claimed: list[ClaimedEntry],
                   next_due_s: float | None) -> None:
        await self._loop._take_riding_claim(self._kind, ask, claimed, next_due_s)

    def cancel(self, ask: ClaimAsk) -> None:
        self._loop._cancel_riding_claim(self._kind, ask)
