"""Errors of the Evolution API client, typed so the worker's pure policy can classify them.

Why a hierarchy instead of status codes: the worker decides by *kind* (retry this user later,
back off as a whole, fail at once, adopt the existing instance), and the HTTP detail that
leads to a kind is the client's business (a 403 means "name taken" only on create; a 503,
a refused connection and a timeout all mean "the API is down for everyone").

    EvolutionError
    ├── TransientError            retry this entry later (500, 408, other 5xx, bad 5xx bodies)
    │   ├── ServiceUnavailableError   down for everyone: refused/reset/timeout, 502/503/504
    │   └── RateLimitedError          429, with `retry_after_s`
    ├── AuthError                 401: our key is wrong (service-wide)
    ├── PermanentError            other 4xx: retrying will not help
    │   ├── AlreadyExistsError        403 "already in use" on create: adopt the instance
    │   └── NotFoundError             404
    └── InvalidResponseError      2xx (or 4xx) whose body is not what the contract says

Messages never carry secrets: every text is passed through `redact` with the secrets the
caller knows (the API key, instance tokens, webhook header values) before it is stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from listener.text import one_line

__all__ = [
    "AlreadyExistsError",
    "AuthError",
    "EvolutionError",
    "InvalidResponseError",
    "NotFoundError",
    "PermanentError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "TransientError",
    "UnavailableKind",
    "error_for_status",
    "parse_error_message",
    "parse_retry_after",
    "redact",
]

MASK = "***"
DETAIL_LIMIT = 300
_MIN_SECRET_LEN = 4  # masking 1-3 character "secrets" would shred ordinary text

UnavailableKind = Literal["connect", "reset", "timeout", "http"]

_WS = re.compile(r"\s+")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_ALREADY_IN_USE = re.compile(r"is already in use", re.IGNORECASE)
_GENERATED_TOKEN = re.compile(
    r"\b[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}\b"
)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret (longest first) with `***`.

    Server-generated instance tokens (uppercase UUIDv4) are masked too, known or not;
    instance ids are lowercase UUIDs and stay readable.
    """
    usable = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)
    for secret in usable:
        text = text.replace(secret, MASK)
    return _GENERATED_TOKEN.sub(MASK, text)


def _render_message(message: Any) -> str:
    """Flatten Evolution's `response.message`: a string, an array, or an array of arrays."""
    if isinstance(message, str):
        return message
    if isinstance(message, list):
        parts = [_render_message(item) for item in message]
        return "; ".join(part for part in parts if part)
    if message is None:
        return ""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def _short_type(content_type: str | None) -> str:
    if not content_type:
        return "no content type"
    return content_type.split(";", 1)[0].strip().lower() or "no content type"


def parse_error_message(body: bytes | str | None, content_type: str | None) -> str:
    """A one-line human text for an error body, whatever shape it has.

    Handles the Evolution envelope (`response.message` as string, array or array of
    arrays), other JSON (`{"error": true, "message": ...}`, `{"message": ...}`), HTML and
    text pages from proxies (`non-JSON body (text/html, 157 bytes): 502 Bad Gateway`) and
    empty bodies. At most ~300 characters.
    """
    if body is None or len(body) == 0:
        return "empty body"
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
    text = raw.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError:
        return one_line(_non_json_summary(raw, text, content_type), DETAIL_LIMIT)
    return one_line(_json_summary(value) or "empty message", DETAIL_LIMIT)


def _json_summary(value: Any) -> str:
    if isinstance(value, dict):
        response = value.get("response")
        if isinstance(response, dict) and "message" in response:
            return _render_message(response["message"])
        if "message" in value:
            return _render_message(value["message"])
        error = value.get("error")
        if isinstance(error, str):
            return error
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _non_json_summary(raw: bytes, text: str, content_type: str | None) -> str:
    summary = f"non-JSON body ({_short_type(content_type)}, {len(raw)} bytes)"
    title = _TITLE.search(raw[:65536])
    if title:
        snippet = title.group(1).decode("utf-8", "replace")
    elif "html" in _short_type(content_type) or text.lstrip().startswith("<"):
        snippet = _TAGS.sub(" ", text[:2000])
    else:
        snippet = text[:200]
    snippet = _WS.sub(" ", snippet).strip()[:120]
    return f"{summary}: {snippet}" if snippet else summary


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date; else None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
            return None
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


class EvolutionError(Exception):
    """Base of every client error: `operation`, `status` (None without an HTTP answer), `detail`."""

    def __init__(
        self,
        detail: str,
        *,
        operation: str,
        status: int | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.detail = one_line(redact(detail, secrets), DETAIL_LIMIT)
        self.operation = operation
        self.status = status
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no HTTP answer"
        return f"{self.operation}: {where}: {self.detail}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(operation={self.operation!r}, status={self.status!r}, "
            f"detail={self.detail!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle by attributes (the constructor is keyword-only), e.g. across processes.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[EvolutionError], state: dict[str, Any]) -> EvolutionError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error.__str__())
    return error


class TransientError(EvolutionError):
    """Retry this entry later, per the user's retry policy."""


class ServiceUnavailableError(TransientError):
    """The API looks down for everyone: refused, reset, timed out, or 502/503/504."""

    def __init__(
        self,
        detail: str,
        *,
        operation: str,
        kind: UnavailableKind,
        status: int | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.kind: UnavailableKind = kind
        super().__init__(detail, operation=operation, status=status, secrets=secrets)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(operation={self.operation!r}, kind={self.kind!r}, "
            f"status={self.status!r}, detail={self.detail!r})"
        )


class RateLimitedError(TransientError):
    """429: wait `retry_after_s` (None when the answer did not say) before the next call."""

    def __init__(
        self,
        detail: str,
        *,
        operation: str,
        retry_after_s: float | None,
        status: int | None = 429,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(detail, operation=operation, status=status, secrets=secrets)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(operation={self.operation!r}, status={self.status!r}, "
            f"retry_after_s={self.retry_after_s!r}, detail={self.detail!r})"
        )


class AuthError(EvolutionError):
    """401: the API key is wrong or was rotated; a service-wide problem, not the user's."""


class PermanentError(EvolutionError):
    """A 4xx that retrying will not fix (bad request, forbidden, not found, ...)."""


class AlreadyExistsError(PermanentError):
    """403 'This name "X" is already in use.' on create: the instance exists; adopt it."""


class NotFoundError(PermanentError):
    """404: the instance (or route) does not exist."""


class InvalidResponseError(EvolutionError):
    """An answer whose body breaks the contract (not JSON, wrong shape, too large)."""


def error_for_status(
    status: int,
    body: bytes | str | None,
    content_type: str | None,
    operation: str,
    retry_after_header: str | None = None,
    *,
    secrets: Iterable[str | None] = (),
    detail: str | None = None,
) -> EvolutionError:
    """Map a non-success HTTP answer to the error the worker acts on.

    `detail` overrides the text parsed from the body (used when the body was not read,
    e.g. it was too large).
    """
    text = detail if detail is not None else parse_error_message(body, content_type)
    common: dict[str, Any] = {"operation": operation, "status": status, "secrets": secrets}
    if status == 401:
        return AuthError(text, **common)
    if status == 429:
        return RateLimitedError(text, retry_after_s=parse_retry_after(retry_after_header), **common)
    if status == 403 and operation == "create_instance" and _ALREADY_IN_USE.search(text):
        return AlreadyExistsError(text, **common)
    if status == 404:
        return NotFoundError(text, **common)
    if status == 408:
        return TransientError(text, **common)
    if status in (502, 503, 504):
        return ServiceUnavailableError(text, kind="http", **common)
    if 500 <= status <= 599:
        return TransientError(text, **common)
    if 300 <= status <= 499:
        # 3xx: redirects are not followed (a wrong base URL must not silently move a POST).
        return PermanentError(text, **common)
    return InvalidResponseError(f"unexpected status: {text}", **common)
