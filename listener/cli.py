"""`evolution-listener`: thin subcommands. Parse, call, print, exit code.

Exit codes: 0 ok, 1 failure, 2 usage, 78 configuration (EX_CONFIG: systemd does not
restart a service that cannot work as configured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener import __version__, aio
from listener.config import (
    EX_CONFIG,
    ConfigError,
    DatabaseSettings,
    Settings,
    load_settings,
)
from listener.text import one_line

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _err(message: str) -> None:
    print(f"evolution-listener: {message}", file=sys.stderr, flush=True)


def _configure_logging(fmt: str = "auto", level: str = "WARNING", *, secrets: Sequence[str] = (),
                       to_stderr: bool = True) -> None:
    from listener.ops.logging import configure_logging

    configure_logging(fmt, level, secrets, stream=sys.stderr if to_stderr else sys.stdout)


def _db_pool(settings: DatabaseSettings, size: int = 2) -> AsyncConnectionPool:
    from listener.db.pool import make_pool

    return make_pool(settings.dsn, min_size=1, max_size=size, timeout_s=15.0)


# --- run ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    _configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets(),
                       to_stderr=False)
    from listener.service import run_service

    try:
        return aio.run(run_service(settings))
    except OSError as error:  # e.g. the metrics port is taken
        _err(one_line(error))
        return EXIT_FAILURE


# --- migrate --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(DatabaseSettings)
    _configure_logging(secrets=settings.secrets())
    from listener.db.migrate import MigrationError, migrate

    try:
        report = asyncio.run(migrate(settings.dsn))
    except MigrationError as error:
        _err(f"migrate: {error}")
        return EXIT_FAILURE
    except psycopg.OperationalError as error:
        _err(f"migrate: cannot reach {settings.dsn_for_display}: {one_line(error)}")
        return EXIT_FAILURE
    except psycopg.Error as error:  # reached, but refused (e.g. the service's own role)
        _err(f"migrate: failed on {settings.dsn_for_display}: {one_line(error)} -> run it "
             "with an owner's DATABASE_URL")
        return EXIT_FAILURE
    for name in report.applied:
        print(f"applied  {name}")
    for name in report.changed:
        print(f"warning  {name} changed since it was applied (not re-applied)")
    if not report.applied:
        print(f"up to date ({len(report.already)} migrations applied)")
    return EXIT_OK


# --- stats / retry / cleanup ----------------------------------------------------------------


async def _check_database(dsn: str) -> None:
    """One direct connection first: an unreachable database fails at once with its real
    reason (a pool would retry for its whole timeout, then only say "incomplete")."""
    conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=10)
    await conn.close()


def _with_pool(settings: DatabaseSettings,
               action: Callable[[AsyncConnectionPool], Any]) -> Any:
    async def runner() -> Any:
        await _check_database(settings.dsn)
        pool = _db_pool(settings)
        await pool.open(wait=True, timeout=15.0)
        try:
            return await action(pool)
        finally:
            await pool.close()

    return asyncio.run(runner())


def cmd_stats(args: argparse.Namespace) -> int:
    settings = load_settings(DatabaseSettings)
    _configure_logging(secrets=settings.secrets())
    from listener import admin

    result = _with_pool(settings, lambda pool: admin.stats(pool, args.recent))
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
        return EXIT_OK
    print(f"{'status':<12}{'count':>10}{'avg_retries':>14}")
    for figures in result.by_status:
        print(f"{figures.status:<12}{figures.count:>10}{figures.avg_retries:>14.2f}")
    if not result.by_status:
        print("(queue is empty)")
    age = result.oldest_pending_age_s
    print(f"oldest pending: {'none' if age is None else f'{age:.1f} s'}")
    if result.recent_failures:
        print("recent failures:")
        for failure in result.recent_failures:
            print(f"  {failure.user_id}  retries={failure.retry_count}  "
                  f"{failure.error_message or ''}")
    print("deletions:" if result.deletions else "deletions: none queued")
    for figures in result.deletions:
        print(f"  {figures.status:<10}{figures.count:>10}{figures.avg_retries:>14.2f}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    if bool(args.user_id) == bool(args.all_failed):
        _err("retry: give either USER_ID or --all-failed")
        return EXIT_USAGE
    # A usage error is reported as such (exit 2) before the configuration is even read.
    user_id = None if args.all_failed else _parse_uuid(args.user_id)
    if not args.all_failed and user_id is None:
        return EXIT_USAGE
    settings = load_settings(DatabaseSettings)
    _configure_logging(secrets=settings.secrets())
    from listener import admin

    if args.all_failed:
        count = _with_pool(settings, admin.retry_all_failed)
        print(f"reset {count} failed entries to pending")
        return EXIT_OK
    assert user_id is not None
    previous = _with_pool(settings, lambda pool: admin.retry_user(pool, user_id))
    if previous is None:
        _err(f"retry: no failed or completed entry for user {user_id}")
        return EXIT_FAILURE
    print(f"user {user_id}: {previous} -> pending (the listener is notified)")
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    if args.older_than < 1:
        _err("cleanup: --older-than must be at least 1 day")
        return EXIT_USAGE
    settings = load_settings(DatabaseSettings)
    _configure_logging(secrets=settings.secrets())
    from listener import admin

    deleted = _with_pool(
        settings, lambda pool: admin.cleanup(pool, args.older_than, args.batch_size)
    )
    print(f"deleted {deleted} completed entries older than {args.older_than} days")
    return EXIT_OK


def _parse_uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        _err(f"not a user id (UUID expected): {raw[:60]!r}")
        return None


# --- drain / provision ----------------------------------------------------------------------


def _with_service(settings: Settings, action: Callable[[Any], Awaitable[int]]) -> int:
    """Run `action(service)` with the service's pool and client open, without its loop."""
    from listener.service import Service

    async def runner() -> int:
        await _check_database(settings.dsn)
        service = Service(settings)
        await service.pool.open(wait=True, timeout=15.0)
        await service.client.start()
        try:
            return await action(service)
        finally:
            await service.client.close()
            await service.pool.close()

    return asyncio.run(runner())


def cmd_drain(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    _configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets())

    async def drain(service: Any) -> int:
        counts = await service.worker.drain()
        print(f"completed={counts.completed} retried={counts.retried} failed={counts.failed} "
              f"released={counts.released}")
        reason = service.worker.backoff_reason()
        if reason is not None:
            _err(f"drain stopped early: {reason}")
            return EXIT_FAILURE
        return EXIT_FAILURE if counts.failed else EXIT_OK

    return _with_service(settings, drain)


def cmd_provision(args: argparse.Namespace) -> int:
    user_id = _parse_uuid(args.user_id)
    if user_id is None:
        return EXIT_USAGE
    settings = load_settings(Settings)
    _configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets())

    async def provision(service: Any) -> int:
        row = await service.store.queue_row(user_id)
        if row is not None and row.status == "completed" and not args.force:
            print(f"user {user_id}: already completed; use --force to re-apply its webhook")
            return EXIT_OK
        if row is None:
            await service.store.enqueue(user_id)
            print(f"queued: user {user_id}")
        entry = await service.store.claim_user(user_id)
        if entry is None:
            _err(f"user {user_id} is being processed by another replica right now")
            return EXIT_FAILURE
        print(f"claimed: queue_id={entry.id} attempt={entry.retry_count + 1}")
        await service.worker.process_entry(service.creation, entry, echo=print)
        final = await service.store.queue_row(user_id)
        status, error = (final.status, final.error_message) if final else ("missing", None)
        print(f"status: {status}" + (f" ({error})" if error else ""))
        return EXIT_OK if status == "completed" else EXIT_FAILURE

    return _with_service(settings, provision)


# --- reconcile (SPEC §9) --------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace) -> int:
    if args.delete_orphans and not args.apply:
        _err("reconcile: --delete-orphans only makes sense with --apply")
        return EXIT_USAGE
    settings = load_settings(Settings)
    _configure_logging(settings.log_format, "WARNING", secrets=settings.secrets())
    from listener.reconcile_cmd import run_reconcile

    return _with_service(settings, lambda service: run_reconcile(service, args))


# --- doctor / demo / simulator --------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from listener.doctor import run_doctor

    return asyncio.run(run_doctor(os.environ))


def cmd_demo(args: argparse.Namespace) -> int:
    from listener.dev import embedded_pg

    if not embedded_pg.available():
        print(f"evolution-listener demo: {embedded_pg.MISSING_EXTRA}", file=sys.stderr)
        return 1
    from listener.dev.demo.run import main as demo_main

    return demo_main(args.demo_args)


def cmd_simulator(args: argparse.Namespace) -> int:
    from listener.dev.simulator import main as simulator_main

    return simulator_main(args.simulator_args)


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evolution-listener",
        description="Provision an Evolution API instance for every new user, event-driven.",
        epilog="Configuration comes from the environment (see README). Exit codes: 0 ok, "
               "1 failure, 2 usage, 78 configuration.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the service (LISTEN, provision, sweep) until SIGTERM")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("migrate", help="apply pending SQL migrations (needs only DATABASE_URL)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("drain", help="process every due entry once, print counts, exit "
                                     "(1 if any entry failed)")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("provision", help="provision one user now, printing each step")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--force", action="store_true",
                   help="also for a completed user: adopt its instance, re-apply its webhook")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("stats", help="the seed's monitoring figures")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--recent", type=int, default=10, help="recent failures to list")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("retry", help="reset a failed/completed user (or all failed) to pending")
    p.add_argument("user_id", metavar="USER_ID", nargs="?")
    p.add_argument("--all-failed", action="store_true")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("cleanup", help="delete completed entries older than N days, in batches")
    p.add_argument("--older-than", type=int, default=30, metavar="DAYS")
    p.add_argument("--batch-size", type=int, default=1000)
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("reconcile", help="compare the tables with the Evolution server and "
                                         "report drift (exit 1 on drift); --apply repairs it")
    p.add_argument("--apply", action="store_true",
                   help="repair the drift through the normal paths (default: dry run, "
                        "changes nothing)")
    p.add_argument("--delete-orphans", action="store_true",
                   help="with --apply, also delete prefixed instances that have neither a "
                        "profile nor an instance row (default: only reported)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout: counts, drift, applied (default: text)")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("doctor", help="check config, database, trigger, LISTEN, Evolution API")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="the whole job on an embedded PostgreSQL and the simulator",
                       add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulator", help="the Evolution API simulator on its own",
                       add_help=False)
    p.add_argument("simulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_simulator)
    return parser


# Subcommands that parse their own flags: argparse.REMAINDER cannot take an option-like first
# argument (`simulator --port 8080`, `demo --help` were rejected as unrecognized arguments).
_PASSTHROUGH = {"demo": cmd_demo, "simulator": cmd_simulator}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv and argv[0] in _PASSTHROUGH:
        rest = argv[1:]
        args = argparse.Namespace(command=argv[0], func=_PASSTHROUGH[argv[0]],
                                  demo_args=rest, simulator_args=rest)
    else:
        args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as error:
        _err(str(error))
        return EX_CONFIG
    except psycopg.OperationalError as error:
        _err(f"database unreachable: {one_line(error)}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the last line of defence: one line, no traceback
        from listener.ops.logging import redact_text

        _err(f"{args.command} failed: {type(error).__name__}: {redact_text(one_line(error))}")
        return EXIT_FAILURE
