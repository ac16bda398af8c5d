"""`evolution-listener simulator`: one or several simulated Evolution API servers until
SIGINT/SIGTERM. Flags set `SimulatorOptions`; `POST /_sim/control` changes them later."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from listener import aio
from listener.dev.argtypes import number
from listener.dev.simulator.harness import server_options
from listener.dev.simulator.options import SimulatorOptions
from listener.dev.simulator.server import Simulator

__all__ = ["build_parser", "main", "options_from_args"]


_rate = number(at_least=0.0, at_most=1.0)
_non_negative = number(at_least=0.0)
_positive = number(above=0.0)
_positive_int = number(int, at_least=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evolution-listener simulator",
        description="Run the Evolution API v2.3.6 simulator (with fault switches) until "
        "SIGINT/SIGTERM. Control it at runtime with POST /_sim/control.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port of the first server (default 8080; 0 = any)"
    )
    parser.add_argument(
        "--servers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N independent servers (own state and key) on consecutive ports from --port "
        "(any free ports with --port 0); with N > 1 server n's key is <api-key>-n",
    )
    parser.add_argument("--api-key", default="sim-key", help="the global API key")
    parser.add_argument("--latency-ms", type=_non_negative, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=_non_negative, default=0.0)
    parser.add_argument("--error-rate", type=_rate, default=0.0, help="share answered 500")
    parser.add_argument("--rate-limit-rate", type=_rate, default=0.0, help="share answered 429")
    parser.add_argument("--retry-after-s", type=_non_negative, default=1.0)
    parser.add_argument("--hang-rate", type=_rate, default=0.0, help="share never answered")
    parser.add_argument("--reset-rate", type=_rate, default=0.0, help="share reset, no answer")
    parser.add_argument(
        "--lose-response-rate", type=_rate, default=0.0, help="share done but answer dropped"
    )
    parser.add_argument("--webhook-set-error-rate", type=_rate, default=0.0)
    parser.add_argument(
        "--delete-delay-s",
        type=_non_negative,
        default=1.0,
        help="after DELETE the name stays in use and listed this long (default 1.0: recorded "
        "v2.3.6 still had it a few ms later, not 1.5 s later)",
    )
    parser.add_argument(
        "--del-instance-s",
        type=_positive,
        default=None,
        metavar="S",
        help="like DEL_INSTANCE: delete instances not connected S seconds after creation "
        "(default off)",
    )
    parser.add_argument(
        "--no-remove-webhook",
        action="store_true",
        help="never deliver REMOVE_INSTANCE to a loopback webhook (a failing receiver then "
        "cannot hold a delete, as it does on the real server)",
    )
    parser.add_argument("--wrong-key", action="store_true", help="reject every key (401)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--record-limit",
        type=int,
        default=50_000,
        help="requests kept in the /_sim/requests ring (default 50000; 0 = none)",
    )
    parser.add_argument("--log-requests", action="store_true")
    return parser


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    return SimulatorOptions(
        api_key=args.api_key,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after_s,
        hang_rate=args.hang_rate,
        reset_rate=args.reset_rate,
        lose_response_rate=args.lose_response_rate,
        webhook_set_error_rate=args.webhook_set_error_rate,
        delete_delay_s=args.delete_delay_s,
        del_instance_s=args.del_instance_s,
        deliver_remove_instance=not args.no_remove_webhook,
        wrong_key=args.wrong_key,
        seed=args.seed,
        log_requests=args.log_requests,
        record_requests=args.record_limit > 0,
        record_limit=max(0, args.record_limit),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: parse flags, serve until SIGINT/SIGTERM, return 0 (1 if it cannot listen)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        options = options_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.log_requests:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: the control endpoints need no key", file=sys.stderr)
    try:
        return aio.run(_main_async(args.host, args.port, args.servers, options))
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1


async def _main_async(host: str, port: int, count: int, options: SimulatorOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    simulators: list[Simulator] = []
    try:
        for index in range(count):
            simulator = Simulator(server_options(options, index, count))
            await simulator.start(host, port + index if port else 0)
            simulators.append(simulator)
            which = f" server {index + 1} of {count}" if count > 1 else ""
            print(
                f"Evolution API simulator (v{options.version}){which} on {simulator.base_url}",
                flush=True,
            )
        await stop.wait()
    finally:
        await asyncio.gather(*(s.stop() for s in simulators), return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return 0
