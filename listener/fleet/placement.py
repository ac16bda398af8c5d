"""Which server a new instance goes to (SPEC §10): a pure decision over counts and health.

Rule: among servers that are `active`, not backing off and with room left (used < capacity,
or no capacity), the lowest used share wins, where share = used / capacity and a server
without a capacity has share 0. Ties go to the lower used count, then to the name in
alphabetical order, so every replica given the same figures makes the same choice.

`used` counts the instances recorded on the server plus placements in flight (queue rows
placed there and not finished). A server with no capacity therefore always wins against a
bounded one that holds anything: give every server a capacity to spread by share.

When nothing qualifies the answer is a Wait with its reason:
- NONE_ACTIVE: every server is draining;
- ALL_FULL: every active server is full (a capacity alert, not an outage);
- ALL_BACKING_OFF: the active servers with room left are all backing off (an outage).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from fractions import Fraction

from listener.fleet.servers import ServerSpec, ServerState


@dataclass(frozen=True)
class ServerLoad:
    """What placement knows of one server at one moment."""

    name: str
    capacity: int | None
    state: ServerState
    used: int
    backing_off: bool = False

    @property
    def full(self) -> bool:
        return self.capacity is not None and self.used >= self.capacity

    @property
    def share(self) -> Fraction:
        """Exact used/capacity (no float ties); 0 when the server has no capacity."""
        return Fraction(0) if self.capacity is None else Fraction(self.used, self.capacity)


class WaitReason(StrEnum):
    NONE_ACTIVE = "none_active"
    ALL_FULL = "all_full"
    ALL_BACKING_OFF = "all_backing_off"


@dataclass(frozen=True)
class Placed:
    server: str


@dataclass(frozen=True)
class Wait:
    reason: WaitReason
    message: str


Placement = Placed | Wait


def loads(
    servers: Iterable[ServerSpec], used: Mapping[str, int], backing_off: Collection[str]
) -> list[ServerLoad]:
    """Join the configuration with the counted usage and the health registry's view.

    A server absent from `used` holds nothing yet; names in `used` that are not configured
    (a server removed from the file) take no placements and are ignored here."""
    return [
        ServerLoad(s.name, s.capacity, s.state, used.get(s.name, 0), s.name in backing_off)
        for s in servers
    ]


def _rank(load: ServerLoad) -> tuple[Fraction, int, str]:
    return (load.share, load.used, load.name)


def place(servers: Sequence[ServerLoad]) -> Placement:
    """The server for one new instance, or why it must wait."""
    active = [s for s in servers if s.state is ServerState.ACTIVE]
    if not active:
        return Wait(WaitReason.NONE_ACTIVE, "no active Evolution API server (all draining)")
    with_room = [s for s in active if not s.full]
    if not with_room:
        names = ", ".join(f"{s.name} {s.used}/{s.capacity}" for s in sorted(active, key=_rank))
        return Wait(WaitReason.ALL_FULL, f"every active Evolution API server is full ({names})")
    candidates = [s for s in with_room if not s.backing_off]
    if not candidates:
        names = ", ".join(sorted(s.name for s in with_room))
        return Wait(WaitReason.ALL_BACKING_OFF,
                    f"every Evolution API server with room left is backing off ({names})")
    return Placed(min(candidates, key=_rank).name)


def place_many(servers: Sequence[ServerLoad], count: int) -> list[Placement]:
    """Place `count` new instances one after another, each counting the ones before it.

    For a claimed batch: one usage count from the database, then this; the i-th answer is
    for the i-th entry. Once one waits, the rest wait for the same reason."""
    current = {s.name: s for s in servers}
    answers: list[Placement] = []
    for _ in range(count):
        answer = place(list(current.values()))
        answers.append(answer)
        if isinstance(answer, Placed):
            chosen = current[answer.server]
            current[answer.server] = replace(chosen, used=chosen.used + 1)
    return answers
