"""The demo's command line: what a run does (signups, rate, faults, concurrency) and its
checks; `DemoOptions` is the parsed, clamped result the run reads."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from listener.dev.argtypes import number

__all__ = ["DemoOptions", "build_parser"]


_positive_int = number(int, at_least=1)
_positive_float = number(above=0.0)
_share = number(at_least=0.0, at_most=0.5)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evolution-listener demo",
        description="Run the whole job locally: an embedded PostgreSQL, the Evolution API "
        "simulator (with latency and a few faults), the service, and a stream of synthetic "
        "signups; then a summary. No setup, nothing left behind.",
    )
    parser.add_argument("--signups", type=_positive_int, default=250,
                        help="how many users sign up (default 250)")
    parser.add_argument("--rate", type=_positive_float, default=10.0,
                        help="signups per second (default 10: about 25 s of signups)")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="simulated Evolution API latency per request (default 20)")
    parser.add_argument("--error-rate", type=_share, default=0.03,
                        help="share of requests answered 500, retried (default 0.03)")
    parser.add_argument("--lost-rate", type=_share, default=0.01,
                        help="share of requests done but their answer lost; the retry adopts "
                             "the instance (default 0.01)")
    parser.add_argument("--rate-limit-rate", type=_share, default=0.005,
                        help="share of requests answered 429, paused not counted "
                             "(default 0.005)")
    parser.add_argument("--reject", type=int, default=2, metavar="N",
                        help="users the simulator rejects with a permanent 400 (default 2)")
    parser.add_argument("--retry-base-ms", type=_positive_int, default=800,
                        help="first retry delay, doubling (default 800, the seed's policy)")
    parser.add_argument("--concurrency", type=_positive_int, default=16,
                        help="the service's LISTENER_CONCURRENCY (default 16)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the simulator's fault draws (default: random)")
    parser.add_argument("--drain-timeout", type=_positive_float, default=60.0, metavar="S",
                        help="how long to wait for the last entries after the last signup")
    parser.add_argument("--servers", type=number(int, at_least=1, at_most=5), default=1,
                        help="how many simulated Evolution servers (default 1); with more, "
                             "new instances are placed by share of capacity (SPEC §10)")
    parser.add_argument("--capacities", default=None, metavar="N,N,...",
                        help="capacity of each server (default with --servers 2 or more: "
                             "1, 2, 3... parts of 1.2 x the signups, so they fill by share)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the database running and print its DSN (for psql)")
    parser.add_argument("--plain", action="store_true",
                        help="plain periodic lines even on a terminal")
    return parser


@dataclass(frozen=True)
class DemoOptions:
    signups: int
    rate: float
    latency_ms: float
    error_rate: float
    lost_rate: float
    rate_limit_rate: float
    reject: int
    retry_base_ms: int
    concurrency: int
    seed: int | None
    drain_timeout_s: float
    keep: bool
    plain: bool
    servers: int = 1
    capacities: tuple[int, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        return cls(
            signups=args.signups, rate=args.rate, latency_ms=max(0.0, args.latency_ms),
            error_rate=args.error_rate, lost_rate=args.lost_rate,
            rate_limit_rate=args.rate_limit_rate,
            reject=max(0, min(args.reject, args.signups)), retry_base_ms=args.retry_base_ms,
            concurrency=args.concurrency, seed=args.seed,
            drain_timeout_s=args.drain_timeout, keep=args.keep, plain=args.plain,
            servers=args.servers, capacities=capacities(args.capacities, args.servers,
                                                        args.signups),
        )


def capacities(text: str | None, servers: int, signups: int) -> tuple[int, ...]:
    """The servers' capacities: as given, or 1, 2, 3... parts of 1.2 x the signups (one
    server: unlimited). Raises SystemExit (argparse's way) on a bad list."""
    if text is not None:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise SystemExit(f"--capacities: not a list of integers: {text}") from None
        if len(values) != servers or min(values) < 1:
            raise SystemExit(f"--capacities: {servers} positive integers expected")
        return values
    if servers == 1:
        return ()
    parts = servers * (servers + 1) // 2
    return tuple(-(-(signups * 6 * (i + 1)) // (5 * parts)) for i in range(servers))
