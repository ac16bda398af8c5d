"""What kind of PostgreSQL endpoint a DSN names, and whether this machine can reach it.

Why: on Supabase the direct host `db.<ref>.supabase.co` has only an IPv6 address unless the
project buys the IPv4 add-on; from an IPv4-only VM the connection fails with "Network is
unreachable" and nothing says why. The decisions here are pure (addresses found + local
capability -> verdict) so they are unit-tested without the internet; the two probes
(`resolve_families`, `has_ipv6_route`) are the only I/O and are injected into `doctor`.
"""

from __future__ import annotations

import enum
import errno
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "Endpoint",
    "Kind",
    "Reachability",
    "classify",
    "endpoint_of",
    "has_ipv6_route",
    "ipv6_only_unreachable",
    "probe_reachability",
    "resolve_families",
]

SESSION_POOLER_ADVICE = (
    "use the session pooler instead: postgresql://<user>.<project-ref>@aws-0-<region>"
    ".pooler.supabase.com:5432/postgres (IPv4; Supabase dashboard > Connect > Session pooler)"
)


class Kind(enum.Enum):
    SUPABASE_DIRECT = "Supabase direct connection"
    SUPABASE_SESSION_POOLER = "Supabase session pooler"
    TRANSACTION_POOLER = "transaction-mode pooler"
    UNIX_SOCKET = "local Unix socket"
    OTHER = "PostgreSQL server"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str


def endpoint_of(dsn: str) -> Endpoint | None:
    """Host, port and user of a DSN (first host of a list); None when it cannot be parsed."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError; a bad DSN is config's to report
        return None
    host = str(params.get("host") or "").split(",")[0]
    port_text = str(params.get("port") or "5432").split(",")[0]
    try:
        port = int(port_text)
    except ValueError:
        return None
    return Endpoint(host, port, str(params.get("user") or ""))


def classify(endpoint: Endpoint) -> Kind:
    """Pure: which of the connection kinds the operator's road describes this is."""
    host = endpoint.host.lower()
    if not host or host.startswith("/"):
        return Kind.UNIX_SOCKET
    if endpoint.port == 6543:
        return Kind.TRANSACTION_POOLER
    if host.endswith(".pooler.supabase.com"):
        return Kind.SUPABASE_SESSION_POOLER
    if host.startswith("db.") and host.endswith(".supabase.co"):
        return Kind.SUPABASE_DIRECT
    return Kind.OTHER


@dataclass(frozen=True)
class Reachability:
    """What resolving the host found and whether this machine can route IPv6."""

    families: frozenset[int]
    ipv6_route: bool


def ipv6_only_unreachable(found: Reachability) -> bool:
    """Pure: the host has only IPv6 addresses and this machine cannot route IPv6."""
    return (socket.AF_INET6 in found.families and socket.AF_INET not in found.families
            and not found.ipv6_route)


def resolve_families(host: str, port: int) -> frozenset[int]:
    """Address families of the host's addresses (getaddrinfo); empty when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return frozenset()
    return frozenset(int(info[0]) for info in infos)


def _ipv6_addresses(host: str, port: int) -> Iterable[str]:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


def has_ipv6_route(host: str, port: int) -> bool:
    """Whether the kernel has a route to the host's IPv6 address: a UDP `connect` only picks
    a route (no packet is sent) and fails with ENETUNREACH/EADDRNOTAVAIL when there is none."""
    for address in _ipv6_addresses(host, port):
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.connect((address, port))
            return True
        except OSError as error:
            if error.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EHOSTUNREACH,
                               errno.EAFNOSUPPORT):
                continue
            return True  # some other refusal: a route exists, the TCP connect will tell
    return False


Probe = Callable[[str, int], Reachability]


def probe_reachability(host: str, port: int) -> Reachability:
    """The real probe: DNS, then the IPv6 route when there is an IPv6 address."""
    families = resolve_families(host, port)
    route = has_ipv6_route(host, port) if socket.AF_INET6 in families else False
    return Reachability(families, route)
