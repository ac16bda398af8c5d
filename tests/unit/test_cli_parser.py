"""The command line as an operator reads it: every option of every subcommand explains
itself and its default; --env-file parses systemd EnvironmentFile lines."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from listener.cli import _take_env_file, build_parser, main
from listener.config import (
    EX_CONFIG,
    ConfigError,
    EnvFileError,
    Settings,
    default_pool_size,
    load_env_file,
    load_settings,
    parse_env_file,
)

pytestmark = pytest.mark.unit


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_option_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    subcommands = _subparsers(parser)
    assert {"run", "migrate", "drain", "stats", "retry", "cleanup", "doctor",
            "export-migrations", "install-files"} <= set(subcommands)
    missing = []
    for name, sub in [("", parser), *subcommands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help: {missing}"


@pytest.mark.parametrize("command", ["run", "migrate", "drain", "stats", "retry", "cleanup",
                                     "doctor", "provision", "export-migrations",
                                     "install-files"])
def test_every_subcommand_takes_env_file_and_shows_defaults(command: str) -> None:
    sub = _subparsers(build_parser())[command]
    text = sub.format_help()
    assert "--env-file PATH" in text
    for action in sub._actions:
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) \
                and action.dest != "help":
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest


def test_cleanup_help_names_its_defaults() -> None:
    text = " ".join(_subparsers(build_parser())["cleanup"].format_help().split())
    assert "(default: 30)" in text and "(default: 1000)" in text


def test_top_level_help_documents_exit_code_130() -> None:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    assert "130 interrupted" in " ".join(out.getvalue().split())


def test_env_file_is_taken_off_passthrough_commands() -> None:
    assert _take_env_file(["--env-file", "/x", "--port", "1"]) == ("/x", ["--port", "1"])
    assert _take_env_file(["--env-file=/y"]) == ("/y", [])
    assert _take_env_file(["--port", "1"]) == (None, ["--port", "1"])


def test_env_file_syntax_of_systemd() -> None:
    text = """
# comment
; also a comment
DATABASE_URL=postgresql://u:p#w@h/db
export LISTENER_CONCURRENCY=4
WEBHOOK_AUTHORIZATION="Bearer a b"
EMPTY=
QUOTED='x'
"""
    assert parse_env_file(text) == {
        "DATABASE_URL": "postgresql://u:p#w@h/db",
        "LISTENER_CONCURRENCY": "4",
        "WEBHOOK_AUTHORIZATION": "Bearer a b",
        "EMPTY": "",
        "QUOTED": "x",
    }


def test_env_file_bad_line_names_the_line_not_its_content() -> None:
    with pytest.raises(EnvFileError) as caught:
        parse_env_file("A=1\nsecret-without-equals\n")
    assert "line 2" in str(caught.value) and "secret" not in str(caught.value)


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_env_file(str(tmp_path / "nope.env"), {})
    assert caught.value.exit_code == EX_CONFIG
    assert "nope.env" in str(caught.value) and "\n" not in str(caught.value)


def test_env_file_values_win_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "e.env"
    path.write_text("A=from-file\n")
    environ = {"A": "from-env", "B": "kept"}
    load_env_file(str(path), environ)
    assert environ == {"A": "from-file", "B": "kept"}


BASE = {"DATABASE_URL": "postgresql://u@h/db", "EVOLUTION_API_BASE_URL": "http://e",
        "EVOLUTION_API_KEY": "k", "SUPABASE_URL": "https://x.supabase.co"}


def test_pool_size_defaults_from_concurrency_and_counts_the_listen_connection() -> None:
    assert default_pool_size(8) == 10 and default_pool_size(64) == 18
    settings = load_settings(Settings, {**BASE, "LISTENER_CONCURRENCY": "3"})
    assert settings.pool_size == 5 and settings.connections_per_replica == 6
    settings = load_settings(Settings, {**BASE, "LISTENER_DB_POOL_SIZE": "4"})
    assert settings.pool_size == 4 and settings.connections_per_replica == 5
    assert load_settings(Settings, {**BASE, "LISTENER_DB_POOL_SIZE": "auto"}).pool_size == 10


@pytest.mark.parametrize("bad", ["1", "0", "-3", "lots", "1001"])
def test_bad_pool_size_is_a_config_error_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings, {**BASE, "LISTENER_DB_POOL_SIZE": bad})
    assert "LISTENER_DB_POOL_SIZE" in str(caught.value)
