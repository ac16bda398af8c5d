"""Logging: JSON lines for journald, text for a terminal, and no secret ever printed."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from listener.ops import logging as ops_logging
from listener.ops.logging import configure_logging, get_logger, redact_text, register_secret

pytestmark = pytest.mark.unit

API_KEY = "evo-api-key-9f8e7d6c5b4a"
WEBHOOK_AUTH = "Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature"
DB_PASSWORD = "s3cr:t/p@ss"  # contains characters a DSN must percent-encode
SECRETS = [API_KEY, WEBHOOK_AUTH, DB_PASSWORD]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if isinstance(h, ops_logging._ListenerHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)
    ops_logging._REGISTRY.replace([])
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(stream)]


def _configure(fmt: str = "json", level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt, level, SECRETS, stream=stream)
    return stream


def test_json_line_has_core_fields_and_extras() -> None:
    stream = _configure("json")
    get_logger("listener.worker").info(
        "provisioned %s",
        "ok",
        extra={
            "user_id": "3f0c1b2a-0000-4000-8000-000000000001",
            "attempt": 1,
            "duration_ms": 12.5,
            "step": "create",
        },
    )
    [entry] = _json_lines(stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "listener.worker"
    assert entry["msg"] == "provisioned ok"
    assert entry["user_id"] == "3f0c1b2a-0000-4000-8000-000000000001"
    assert entry["attempt"] == 1
    assert entry["duration_ms"] == 12.5
    assert entry["step"] == "create"
    assert entry["ts"].endswith("Z")
    ts = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    assert ts.tzinfo is not None and ts.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60


def test_one_object_per_line_even_with_newlines_in_message() -> None:
    stream = _configure("json")
    get_logger("t").warning("line one\nline two", extra={"error": "a\nb"})
    lines = _lines(stream)
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "line one\nline two"


def test_extra_named_like_a_core_field_does_not_overwrite_it() -> None:
    stream = _configure("json")
    get_logger("t").info("hello", extra={"level": "mine", "ts": "also mine"})
    [entry] = _json_lines(stream)
    assert entry["level"] == "INFO"
    assert entry["extra_level"] == "mine"
    assert entry["extra_ts"] == "also mine"


def test_non_json_extras_are_logged_as_text() -> None:
    import uuid

    stream = _configure("json")
    user = uuid.UUID("3f0c1b2a-0000-4000-8000-000000000002")
    get_logger("t").info("x", extra={"user_id": user, "when": datetime(2025, 1, 2, tzinfo=UTC)})
    [entry] = _json_lines(stream)
    assert entry["user_id"] == str(user)
    assert entry["when"].startswith("2025-01-02")


def test_secrets_are_masked_in_message_args_extras_and_nested_values() -> None:
    stream = _configure("json")
    get_logger("t").error(
        "calling with key %s and auth %s",
        API_KEY,
        WEBHOOK_AUTH,
        extra={
            "error": f"401 for apikey={API_KEY}",
            "headers": {"apikey": API_KEY, "Authorization": WEBHOOK_AUTH, "n": 3},
            "attempts": [API_KEY, 2],
            "password_echo": DB_PASSWORD,
        },
    )
    raw = stream.getvalue()
    for secret in SECRETS:
        assert secret not in raw
    [entry] = _json_lines(stream)
    assert entry["msg"] == "calling with key *** and auth ***"
    assert entry["error"] == "401 for apikey=***"
    assert entry["headers"] == {"apikey": "***", "Authorization": "***", "n": 3}
    assert entry["attempts"] == ["***", 2]
    assert entry["password_echo"] == "***"


def test_percent_encoded_password_is_masked_too() -> None:
    stream = _configure("json")
    encoded = "s3cr%3At%2Fp%40ss"
    get_logger("t").info("dsn fragment %s", f"user:{encoded}")
    assert encoded not in stream.getvalue()
    assert DB_PASSWORD not in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "connect to postgresql://svc:hunter2@db.internal:5432/app failed",
            "connect to postgresql://svc:***@db.internal:5432/app failed",
        ),
        (
            "postgres://svc:p@ss@word@db/app",
            "postgres://svc:***@db/app",
        ),
        (
            "postgresql://db.internal/app?user=svc&password=hunter2&sslmode=require",
            "postgresql://db.internal/app?user=svc&password=***&sslmode=require",
        ),
        (
            "host=db.internal user=svc password='hun ter2' dbname=app",
            "host=db.internal user=svc password=*** dbname=app",
        ),
        (
            "host=db.internal password = hunter2 port=5432",
            "host=db.internal password = *** port=5432",
        ),
        ("postgresql://svc@db.internal:5432/app", "postgresql://svc@db.internal:5432/app"),
        ("postgresql://db.internal:5432/app", "postgresql://db.internal:5432/app"),
    ],
)
def test_dsn_passwords_are_stripped_without_registration(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_unregistered_dsn_in_extra_is_stripped() -> None:
    stream = _configure("json")
    get_logger("t").warning("db down", extra={"dsn": "postgresql://other:topsecret@10.0.0.5/db"})
    [entry] = _json_lines(stream)
    assert entry["dsn"] == "postgresql://other:***@10.0.0.5/db"


def test_secret_registered_at_run_time_is_masked_from_then_on() -> None:
    stream = _configure("json")
    token = "instance-token-ABCDEF123456"
    log = get_logger("t")
    register_secret(token)
    log.info("token is %s", token)
    assert token not in stream.getvalue()
    assert _json_lines(stream)[0]["msg"] == "token is ***"


def test_exception_at_info_has_type_and_one_line_message_without_traceback() -> None:
    stream = _configure("json", "INFO")
    try:
        raise ConnectionError(f"refused\nwhile sending apikey {API_KEY}")
    except ConnectionError:
        get_logger("t").exception("create failed", extra={"user_id": "u1", "attempt": 2})
    [entry] = _json_lines(stream)
    assert entry["level"] == "ERROR"
    assert entry["exc_type"] == "ConnectionError"
    assert entry["exc_message"] == "refused while sending apikey ***"
    assert "traceback" not in entry
    assert API_KEY not in stream.getvalue()


def test_exception_at_debug_adds_a_redacted_traceback() -> None:
    stream = _configure("json", "DEBUG")

    def fail() -> None:
        raise RuntimeError(f"bad DSN postgresql://svc:{DB_PASSWORD}@db/app")

    try:
        fail()
    except RuntimeError:
        get_logger("t").exception("boom")
    [entry] = _json_lines(stream)
    assert entry["exc_type"] == "RuntimeError"
    assert "Traceback (most recent call last)" in entry["traceback"]
    assert "in fail" in entry["traceback"]
    assert DB_PASSWORD not in stream.getvalue()
    assert "svc:***@db" in entry["traceback"]


def test_text_format_is_one_readable_line() -> None:
    stream = _configure("text")
    get_logger("listener.worker").info(
        "provisioned", extra={"user_id": "3f0c", "attempt": 1, "instance": "evo-3f0c"}
    )
    [line] = _lines(stream)
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d INFO  provisioned user_id=3f0c attempt=1 instance=evo-3f0c", line
    ), line


def test_text_format_quotes_values_with_spaces_and_masks_secrets() -> None:
    stream = _configure("text")
    try:
        raise TimeoutError("no answer")
    except TimeoutError:
        get_logger("t").warning(
            "retrying %s", API_KEY, exc_info=True, extra={"error": "connection reset by peer"}
        )
    [line] = _lines(stream)
    assert 'error="connection reset by peer"' in line
    assert 'exc="TimeoutError: no answer"' in line
    assert "WARNING retrying ***" in line
    assert API_KEY not in line


def test_auto_picks_json_off_a_terminal_and_text_on_one() -> None:
    pipe = io.StringIO()
    configure_logging("auto", "INFO", [], stream=pipe)
    get_logger("t").info("hi")
    assert json.loads(pipe.getvalue())["msg"] == "hi"

    tty = FakeTerminal()
    configure_logging("auto", "INFO", [], stream=tty)
    get_logger("t").info("hi")
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO  hi\n", tty.getvalue())


def test_level_filters_records() -> None:
    stream = _configure("json", "warning")
    log = get_logger("t")
    log.info("hidden")
    log.debug("hidden too")
    log.warning("shown")
    assert [e["msg"] for e in _json_lines(stream)] == ["shown"]


def test_configure_twice_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        first = _configure("json")
        second = io.StringIO()
        configure_logging("json", "INFO", ["new-secret-value"], stream=second)
        get_logger("t").info("once %s %s", "new-secret-value", API_KEY)
        ours = [h for h in root.handlers if isinstance(h, ops_logging._ListenerHandler)]
        assert len(ours) == 1
        assert foreign in root.handlers
        assert first.getvalue() == ""
        [entry] = _json_lines(second)
        # The second call's secrets replace the first call's.
        assert entry["msg"] == f"once *** {API_KEY}"
    finally:
        root.removeHandler(foreign)


@pytest.mark.parametrize(("fmt", "level"), [("xml", "INFO"), ("json", "LOUD")])
def test_invalid_format_or_level_is_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError):
        configure_logging(fmt, level, [], stream=io.StringIO())


def test_bad_format_string_does_not_lose_the_record() -> None:
    # Driven directly: pytest's own capture handler would raise on this record first.
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "%d items", ("x",), None)
    assert ops_logging.RedactionFilter().filter(record)
    entry = json.loads(ops_logging.JsonFormatter().format(record))
    assert "log formatting failed" in entry["msg"]
    assert "%d items" in entry["msg"]


def test_empty_secrets_are_ignored() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", ["", "  "], stream=stream)
    get_logger("t").info("nothing to mask here")
    assert _json_lines(stream)[0]["msg"] == "nothing to mask here"


def _redact_every_pattern(text: str) -> str:
    """The redaction without the fast path: every DSN pattern on every text."""
    from listener.ops import logging as ops_logging

    text = ops_logging._REGISTRY.mask(text)
    text = ops_logging._DSN_URL_PASSWORD.sub(rf"\1:{ops_logging.MASK}@", text)
    return ops_logging._DSN_KV_PASSWORD.sub(rf"\1{ops_logging.MASK}", text)


@pytest.mark.parametrize("text", [
    "evo-1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "postgres://svc:pw@db/app",
    "POSTGRESQL://svc:p%40ss@db:5432/app?sslmode=require",
    "postgresql://db/app?password=hunter2",
    "host=db password = 'a b' port=5432",
    "Password=x",
    "no dsn here, just text with : and // and ?",
    "user@example.com wrote a=b",
    "",
])
def test_redaction_fast_path_changes_nothing(text: str) -> None:
    """Skipping a DSN pattern when its '@' or '=' is absent gives the same text."""
    assert redact_text(text) == _redact_every_pattern(text)
