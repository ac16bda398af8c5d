"""`evolution-listener`: thin subcommands. Parse, call, print, exit code.

Exit codes: 0 ok, 1 failure, 2 usage, 78 configuration (EX_CONFIG: systemd does not
restart a service that cannot work as configured), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener import __version__, aio
from listener.config import (
    EX_CONFIG,
    ConfigError,
    DatabaseSettings,
    Settings,
    load_env_file,
    load_settings,
    transaction_pooler_reason,
)
from listener.fleet.servers import SERVERS_ENV, ServersFileError, ServerSpec, load_servers_file
from listener.text import one_line

if TYPE_CHECKING:
    from listener.admin import ServerFigures

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _err(message: str) -> None:
    print(f"evolution-listener: {message}", file=sys.stderr, flush=True)


def _configure_logging(fmt: str = "auto", level: str = "WARNING", *, secrets: Sequence[str] = (),
                       to_stderr: bool = True, syslog_prefix: str = "auto") -> None:
    from listener.ops.logging import configure_logging

    configure_logging(fmt, level, secrets, stream=sys.stderr if to_stderr else sys.stdout,
                      syslog_prefix=syslog_prefix)


def _db_pool(settings: DatabaseSettings, size: int = 2) -> AsyncConnectionPool:
    from listener.db.pool import make_pool

    return make_pool(settings.dsn, min_size=1, max_size=size, timeout_s=15.0)


# --- run ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    _configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets(),
                       to_stderr=False, syslog_prefix=settings.log_syslog_prefix)
    from listener.service import run_service

    try:
        return aio.run(run_service(settings))
    except OSError as error:  # e.g. the metrics port is taken
        _err(one_line(error))
        return EXIT_FAILURE


# --- migrate --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(DatabaseSettings)
    # The runner holds a session advisory lock: a transaction pooler would hand the unlock
    # to another server connection.
    reason = transaction_pooler_reason(settings.dsn)
    if reason:
        raise ConfigError(f"configuration error: DATABASE_URL {reason} (migrate too: its "
                          "session advisory lock needs a session of its own)")
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


def cmd_export_migrations(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from pathlib import Path

    from listener.db.migrate import export_supabase

    plan = export_supabase(Path(args.directory), datetime.now(UTC))
    for name, _ in plan.write:
        print(f"wrote    {Path(args.directory) / name}")
    for name in plan.present:
        note = " (differs from the shipped file: not overwritten)" if name in plan.differs else ""
        print(f"present  {name}{note}")
    if not plan.write:
        print("nothing to write: every migration is already in the folder")
    return EXIT_OK


def cmd_install_files(args: argparse.Namespace) -> int:
    from pathlib import Path

    from listener.deploy_files import read_deploy_file, write_deploy_files

    if args.print is not None:
        sys.stdout.write(read_deploy_file(args.print))
        return EXIT_OK
    written, kept = write_deploy_files(Path(args.write), force=args.force)
    for path in written:
        print(f"wrote    {path}")
    for path in kept:
        print(f"kept     {path} (exists and differs; --force overwrites)")
    return EXIT_FAILURE if kept else EXIT_OK


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

    servers = _configured_servers()
    if servers is None:
        return EX_CONFIG
    result = _with_pool(settings, lambda pool: admin.stats(pool, args.recent, servers))
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
    _print_servers(result.servers)
    return EXIT_OK


def _configured_servers() -> tuple[ServerSpec, ...] | None:
    """The servers file's servers for `stats` (names, states, capacities: no key needed);
    () without a file; None after printing the file's fault."""
    path = os.environ.get(SERVERS_ENV, "").strip()
    if not path:
        return ()
    try:
        return load_servers_file(path, os.environ, require_keys=False)
    except ServersFileError as error:
        _err(str(error))
        return None


def _print_servers(servers: Sequence[ServerFigures]) -> None:
    """Instances and capacity per Evolution server (SPEC §10)."""
    if not servers:
        print("servers: no instance recorded yet")
        return
    print("servers:")
    print(f"  {'name':<16}{'state':<16}{'capacity':>9}{'instances':>10}{'in flight':>10}"
          f"{'free':>7}")
    for s in servers:
        capacity = "-" if s.capacity is None else str(s.capacity)
        free = "-" if s.free is None else str(s.free)
        print(f"  {s.name:<16}{s.state:<16}{capacity:>9}{s.instances:>10}{s.in_flight:>10}"
              f"{free:>7}")


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
    """Run `action(service)` with the service's pool and client open, without its loop,
    holding the service owner's liveness lock throughout: the rows it claims must not look
    like a dead replica's to the running replicas' rescuers."""
    from listener.db.liveness import liveness_lock_held
    from listener.service import Service

    async def runner() -> int:
        await _check_database(settings.dsn)
        service = Service(settings)
        async with liveness_lock_held(settings.dsn, service.owner):
            await service.pool.open(wait=True, timeout=15.0)
            await service.clients.start()
            try:
                return await action(service)
            finally:
                await service.clients.close()
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; wider columns for the long option names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        return text.replace("(default: None)", "(default: not set)") if text else text


ENV_FILE_HELP = ("read KEY=VALUE lines from this file (systemd EnvironmentFile syntax, e.g. "
                 "/etc/evolution-listener/evolution-listener.env) before the settings; its "
                 "values win over the environment. A missing or unreadable file exits 78")


def _common() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", metavar="PATH", default=None, help=ENV_FILE_HELP)
    return common


def build_parser() -> argparse.ArgumentParser:
    from listener.deploy_files import DEPLOY_FILES

    parser = argparse.ArgumentParser(
        prog="evolution-listener",
        description="Provision an Evolution API instance for every new user, event-driven.",
        epilog="Configuration comes from the environment or --env-file (see README). Exit "
               "codes: 0 ok, 1 failure, 2 usage, 78 configuration, 130 interrupted (Ctrl-C; "
               "`run` takes Ctrl-C like SIGTERM and exits 0).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common()]

    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], int],
                description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description or help_text,
                           parents=common, formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        return p

    command("run", "run the service (LISTEN, provision, sweep) until SIGTERM", cmd_run,
            "Run the service until SIGTERM/SIGINT. Needs DATABASE_URL (direct or session-mode), "
            "EVOLUTION_API_BASE_URL, EVOLUTION_API_KEY and SUPABASE_URL or WEBHOOK_URL.")

    command("migrate", "apply pending SQL migrations (needs only DATABASE_URL, an owner's)",
            cmd_migrate,
            "Apply the shipped SQL migrations not yet recorded, under an advisory lock; a "
            "transaction-pooler DSN (port 6543, pgbouncer=true) is refused with exit 78.")

    p = command("export-migrations", "write the migrations into a supabase/migrations folder",
                cmd_export_migrations,
                "Write the shipped migrations with Supabase's timestamped names "
                "(YYYYMMDDHHMMSS_evolution_listener_NNNN_name.sql); one already there (any "
                "timestamp) is not written again. Needs no database.")
    p.add_argument("directory", metavar="DIR",
                   help="the project's supabase/migrations folder (created if missing)")

    p = command("install-files", "print or write the shipped unit, env example, dashboard, "
                                 "alert rules", cmd_install_files)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--print", choices=sorted(DEPLOY_FILES), default=None,
                      help="print one file to stdout: " + ", ".join(
                          f"{k}={v}" for k, v in DEPLOY_FILES.items()))
    what.add_argument("--write", metavar="DIR", default=None,
                      help="write every file into DIR under its own name")
    p.add_argument("--force", action="store_true",
                   help="with --write: overwrite a file that exists with other content")

    command("drain", "process every due entry once, print counts, exit (1 if any failed)",
            cmd_drain)

    p = command("provision", "provision one user now, printing each step", cmd_provision)
    p.add_argument("user_id", metavar="USER_ID", help="the user's UUID (profiles.id)")
    p.add_argument("--force", action="store_true",
                   help="also for a completed user: adopt its instance, re-apply its webhook")

    p = command("stats", "the seed's monitoring figures", cmd_stats)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--recent", type=int, default=10, metavar="N",
                   help="recent failures to list")

    p = command("retry", "reset a failed/completed user (or all failed) to pending", cmd_retry)
    p.add_argument("user_id", metavar="USER_ID", nargs="?",
                   help="the user's UUID; omit with --all-failed")
    p.add_argument("--all-failed", action="store_true",
                   help="reset every failed entry to pending (retry count 0)")

    p = command("cleanup", "delete completed entries older than N days, in batches",
                cmd_cleanup)
    p.add_argument("--older-than", type=int, default=30, metavar="DAYS",
                   help="delete completed entries processed more than DAYS days ago")
    p.add_argument("--batch-size", type=int, default=1000, metavar="ROWS",
                   help="rows deleted per statement (short locks on a large table)")

    p = command("reconcile", "compare the tables with the Evolution server and report drift "
                             "(exit 1 on drift); --apply repairs it", cmd_reconcile)
    p.add_argument("--apply", action="store_true",
                   help="repair the drift through the normal paths (default: dry run, "
                        "changes nothing)")
    p.add_argument("--delete-orphans", action="store_true",
                   help="with --apply, also delete prefixed instances that have neither a "
                        "profile nor an instance row (default: only reported)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout: counts, drift, applied (default: text)")

    command("doctor", "check config, network, database, migrations, trigger, LISTEN, "
                      "Evolution API", cmd_doctor)

    p = command("demo", "the whole job on an embedded PostgreSQL and the simulator", cmd_demo,
                "The demo's own options follow; see `evolution-listener demo --help`.")
    p.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="DEMO_ARGS",
                   help="options of the demo itself")

    p = command("simulator", "the Evolution API simulator on its own", cmd_simulator,
                "The simulator's own options follow; see `evolution-listener simulator --help`.")
    p.add_argument("simulator_args", nargs=argparse.REMAINDER, metavar="SIMULATOR_ARGS",
                   help="options of the simulator itself")
    return parser


def _take_env_file(rest: list[str]) -> tuple[str | None, list[str]]:
    """Pull a leading `--env-file PATH` / `--env-file=PATH` off a pass-through command line."""
    if rest and rest[0] == "--env-file" and len(rest) > 1:
        return rest[1], rest[2:]
    if rest and rest[0].startswith("--env-file="):
        return rest[0].split("=", 1)[1], rest[1:]
    return None, rest


# Subcommands that parse their own flags: argparse.REMAINDER cannot take an option-like first
# argument (`simulator --port 8080`, `demo --help` were rejected as unrecognized arguments).
_PASSTHROUGH = {"demo": cmd_demo, "simulator": cmd_simulator}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv and argv[0] in _PASSTHROUGH:
        env_file, rest = _take_env_file(argv[1:])
        args = argparse.Namespace(command=argv[0], func=_PASSTHROUGH[argv[0]], env_file=env_file,
                                  demo_args=rest, simulator_args=rest)
    else:
        args = build_parser().parse_args(argv)
    try:
        if args.env_file is not None:
            load_env_file(args.env_file)
        code: int = args.func(args)
        return code
    except ConfigError as error:
        _err(str(error))
        return EX_CONFIG
    except psycopg.OperationalError as error:
        _err(f"database unreachable: {one_line(error)}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:  # the last line of defence: one line, no traceback
        from listener.ops.logging import redact_text

        _err(f"{args.command} failed: {type(error).__name__}: {redact_text(one_line(error))}")
        return EXIT_FAILURE
