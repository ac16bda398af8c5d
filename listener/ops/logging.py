"""Logging for an unattended service: JSON lines for journald, one-line text for a terminal.

Why this shape:
- Under systemd stdout is a pipe into journald, which stores one entry per line; one JSON
  object per line keeps every field (`user_id`, `attempt`, `step`, ...) queryable with `jq`
  without a parser for free text. On a terminal a person reads it, so it is short text.
- Secrets must never reach a log, whatever a caller or a library puts in a message, an
  `extra` field or an exception text (psycopg errors quote the DSN, HTTP errors can echo
  headers). So redaction is a filter on *our handler*, applied to the finished record, not
  a discipline every caller has to remember.
- Tracebacks are noise in production and can be long and multi-line; JSON records carry
  the exception type and its one-line message, and the traceback only at DEBUG.

Public API: `configure_logging`, `get_logger`, `register_secret`, `redact_text`, and the
`RedactionFilter`, `JsonFormatter`, `TextFormatter` classes (exposed for tests and reuse).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, unquote

from listener.text import one_line

__all__ = [
    "JsonFormatter",
    "RedactionFilter",
    "SyslogPrefixFormatter",
    "TextFormatter",
    "configure_logging",
    "get_logger",
    "redact_text",
    "register_secret",
]

MASK = "***"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# Names the JSON object itself uses; an `extra` with one of these names gets a prefix.
_CORE_KEYS = frozenset({"ts", "level", "logger", "msg", "exc_type", "exc_message", "traceback"})

# postgres URLs: postgresql://user:PASSWORD@host  (the password may itself contain '@').
_DSN_URL_PASSWORD = re.compile(r"(?i)\b(postgres(?:ql)?://[^\s:/?#@]*):([^\s]*)@")
# password=... as a URL query parameter or in a key=value (libpq) connection string.
_DSN_KV_PASSWORD = re.compile(r"""(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|"[^"]*"|[^\s&;,]+)""")


class _SecretRegistry:
    """The secret strings to mask, compiled into one alternation (longest first).

    Shared by every `RedactionFilter` so that `register_secret` (e.g. an instance token
    learnt at run time) takes effect on the installed handler immediately.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def replace(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._secrets = set()
            for secret in secrets:
                self._add_locked(secret)
            self._compile_locked()

    def add(self, secret: str) -> None:
        with self._lock:
            self._add_locked(secret)
            self._compile_locked()

    def _add_locked(self, secret: str) -> None:
        if not secret or not secret.strip():
            return
        # The same secret often appears percent-encoded (in a DSN) or decoded (in an error).
        for variant in {secret, secret.strip(), quote(secret, safe=""), unquote(secret)}:
            if variant:
                self._secrets.add(variant)

    def _compile_locked(self) -> None:
        if not self._secrets:
            self._pattern = None
            return
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def mask(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text


_REGISTRY = _SecretRegistry()


def register_secret(secret: str) -> None:
    """Add a secret to mask from now on (for values learnt at run time, e.g. an instance token)."""
    _REGISTRY.add(secret)


def redact_text(text: str) -> str:
    """Mask every registered secret and any password in something that looks like a DSN."""
    text = _REGISTRY.mask(text)
    # Each DSN pattern needs a character most log values lack ('@', '='): testing for it
    # first skips two regex scans per string value, the bulk of a log line's cost.
    if "@" in text:
        text = _DSN_URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    if "=" in text:
        text = _DSN_KV_PASSWORD.sub(rf"\1{MASK}", text)
    return text


def _redact_value(value: Any) -> Any:
    """Redact an `extra` value, keeping JSON-friendly scalars and containers as they are."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    # Anything else (UUID, datetime, an exception, a custom object) is logged as its text.
    return redact_text(str(value))


class RedactionFilter(logging.Filter):
    """Rewrites each record in place so no secret survives, whichever formatter runs next.

    The message is rendered (`msg % args`) first, because a secret is usually in the args.
    Exception information is rendered once here, redacted, and stored on the record
    (`exc_text`, `exc_type_name`, `exc_message`) so formatters never see raw exception text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception as failure:  # a bad format string must not lose the record
            message = f"{record.msg!r} (log formatting failed: {type(failure).__name__})"
        record.msg = redact_text(message)
        record.args = None
        for key in list(vars(record)):
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                setattr(record, key, _redact_value(getattr(record, key)))
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.exc_type_name = type(error).__name__
            record.exc_message = redact_text(one_line(str(error), None))
            record.exc_text = redact_text(
                "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            )
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record._redacted = True
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRS
        and not key.startswith("_")
        and key not in ("exc_type_name", "exc_message")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, msg, then the extras."""

    def __init__(self, include_traceback: bool = False) -> None:
        super().__init__()
        self.include_traceback = include_traceback

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry[f"extra_{key}" if key in _CORE_KEYS else key] = value
        exc_type = getattr(record, "exc_type_name", None)
        if exc_type is not None:
            entry["exc_type"] = exc_type
            entry["exc_message"] = getattr(record, "exc_message", "")
            if self.include_traceback and record.exc_text:
                entry["traceback"] = record.exc_text
        if self.include_traceback and record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """`12:00:01 INFO  provisioned user_id=... attempt=1`: local time, for a person."""

    def __init__(self, include_traceback: bool = False) -> None:
        super().__init__(datefmt="%H:%M:%S")
        self.include_traceback = include_traceback

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            self.formatTime(record, self.datefmt),
            f"{record.levelname:<5}",
            one_line(record.getMessage(), None),
        ]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _extras(record).items())
        exc_type = getattr(record, "exc_type_name", None)
        if exc_type is not None:
            exc_message = getattr(record, "exc_message", "")
            parts.append(f"exc={_text_value(f'{exc_type}: {exc_message}')}")
        line = " ".join(parts)
        if self.include_traceback and exc_type is not None and record.exc_text:
            line = f"{line}\n{record.exc_text}"
        return line


class _ListenerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker class: the one root handler `configure_logging` owns and replaces."""


_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# sd-daemon(3) priorities journald reads from a "<N>" line prefix (SyslogLevelPrefix=).
_SYSLOG_PRIORITY = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """3 error (and critical), 4 warning, 6 info, 7 debug."""
    for threshold, priority in _SYSLOG_PRIORITY:
        if levelno >= threshold:
            return priority
    return 7


def wants_syslog_prefix(setting: str, journal_stream: str | None,
                        stream_id: tuple[int, int] | None) -> bool:
    """Pure: prefix lines with "<N>"? `on`/`off` decide; `auto` when the stream is the
    journal itself (JOURNAL_STREAM is "DEV:INODE" of it, see systemd.exec(5)), so output
    redirected elsewhere under systemd stays clean."""
    choice = setting.strip().lower()
    if choice in ("on", "off"):
        return choice == "on"
    if not journal_stream or stream_id is None:
        return False
    return journal_stream.strip() == f"{stream_id[0]}:{stream_id[1]}"


def _stream_id(stream: TextIO) -> tuple[int, int] | None:
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None
    return status.st_dev, status.st_ino


class SyslogPrefixFormatter(logging.Formatter):
    """Wraps a formatter and puts the journald priority in front of each record, so
    `journalctl -p warning` filters (journald strips the prefix from the stored message)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{syslog_priority(record.levelno)}>{self.inner.format(record)}"


def configure_logging(
    fmt: str, level: str, secrets: Iterable[str], stream: TextIO | None = None,
    syslog_prefix: str = "auto", environ: Mapping[str, str] | None = None,
) -> None:
    """Install (or replace) the service's root handler.

    `fmt` is "auto" (JSON unless `stream` is a terminal), "json" or "text"; `level` a
    standard level name. `secrets` replaces the set of strings to mask. `syslog_prefix`
    auto/on/off: "<N>" priority prefixes for journald (auto: when `stream` is the journal
    stream named by JOURNAL_STREAM in `environ`, default the process environment). Calling
    it again replaces the handler it installed before and leaves other handlers alone.
    """
    fmt_key = fmt.strip().lower()
    if fmt_key not in ("auto", "json", "text"):
        raise ValueError(f"log format must be auto, json or text, not {fmt!r}")
    level_no = _LEVELS.get(level.strip().upper())
    if level_no is None:
        raise ValueError(f"log level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    out: TextIO = stream if stream is not None else sys.stdout
    if fmt_key == "auto":
        fmt_key = "text" if _is_terminal(out) else "json"
    debug = level_no <= logging.DEBUG

    _REGISTRY.replace(secrets)
    handler = _ListenerHandler(out)
    handler.addFilter(RedactionFilter())
    formatter: logging.Formatter = (
        JsonFormatter(include_traceback=debug)
        if fmt_key == "json"
        else TextFormatter(include_traceback=debug)
    )
    journal = (os.environ if environ is None else environ).get("JOURNAL_STREAM")
    if wants_syslog_prefix(syslog_prefix, journal, _stream_id(out)):
        formatter = SyslogPrefixFormatter(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ListenerHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_no)
    # Libraries that are chatty at INFO/DEBUG; their warnings still come through.
    for name in ("aiohttp.access", "asyncio"):
        logging.getLogger(name).setLevel(max(level_no, logging.INFO))
    logging.captureWarnings(True)


def get_logger(name: str) -> logging.Logger:
    """The logger for a module; pass `extra={...}` for structured fields."""
    return logging.getLogger(name)
