"""Typed async client for the Evolution API v2.3.6 calls the listener needs.

Why it is built this way:
- One `aiohttp.ClientSession` per service: connections are reused (keep-alive) instead of a
  TCP (and TLS) handshake per call; `max_connections` bounds the pool (0 = no bound).
- Every failure becomes one of the typed errors in `errors.py`, so the worker's policy
  decides by type; nothing here retries (aiohttp itself re-sends an idempotent GET once
  when a reused keep-alive connection turns out to be closed).
- Bodies are read with a bound (`max_body_bytes`): a proxy or a broken server cannot make
  the service buffer megabytes.
- The API key and instance tokens never appear in an error, a repr or a log line: they are
  redacted from every server text we keep, and exceptions are raised `from None` so a
  traceback does not drag aiohttp's request objects (which hold our headers) along.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from listener.evolution.errors import (
    EvolutionError,
    InvalidResponseError,
    PermanentError,
    ServiceUnavailableError,
    TransientError,
    UnavailableKind,
    error_for_status,
)
from listener.evolution.models import (
    CreatedInstance,
    InstanceInfo,
    ServerInfo,
    WebhookSpec,
    WebhookState,
)

__all__ = ["KEY_CHECK_INSTANCE_NAME", "EvolutionClient"]

# A name the listener never creates (':' is outside its name alphabet), so a lookup of it
# answers 404 with a good key and 401 with a bad one.
KEY_CHECK_INSTANCE_NAME = "evolution-listener:key-check"
_USER_AGENT = "evolution-listener/0.1 (+aiohttp)"
# fetchInstances has no pagination: every row in one body (~1.3 KB a row with its settings).
# 64 MiB holds about 50,000 instances, well above the 10,000 reconcile is sized for.
FETCH_ALL_MAX_BYTES = 64 * 1_048_576
_NAME_MAX = 255


class _Secret:
    """Holds a secret string; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"


class _Answer:
    """A complete HTTP answer (status, headers we use, body already read with a bound)."""

    __slots__ = ("body", "content_type", "retry_after", "status")

    def __init__(
        self, status: int, content_type: str | None, retry_after: str | None, body: bytes
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.retry_after = retry_after
        self.body = body


def _display_url(base_url: str) -> str:
    """The base URL without userinfo, safe to show."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _check_name(name: str) -> str:
    """Reject names the server accepts but that break later (empty, padded, too long)."""
    if not name or name != name.strip() or len(name) > _NAME_MAX:
        raise ValueError("instance name must be 1-255 characters without surrounding spaces")
    return name


def _json(value: str) -> str:
    """One JSON string value, encoded as every request body is (UTF-8, no ASCII escaping)."""
    return json.dumps(value, ensure_ascii=False)


def _segment(name: str) -> str:
    return quote(name, safe="")


# fetchInstances' own 404 (`Instance "x" not found`), as opposed to a route that does not
# exist (`Cannot GET /...`, or a proxy's page), which means the base URL is wrong.
_INSTANCE_NOT_FOUND = re.compile(r'^Instances? ".*" not found$')


def _is_instance_not_found(error: EvolutionError) -> bool:
    return error.status == 404 and bool(_INSTANCE_NOT_FOUND.match(error.detail))


# (operation, duration in seconds, failure label: None on success, else the HTTP status or
# "timeout" / "reset" / "connect"): lets the service feed its metrics without the client
# knowing about Prometheus.
RequestObserver = Callable[[str, float, str | None], None]


class EvolutionClient:
    """The calls the listener makes to Evolution API, with typed results and typed errors."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        max_connections: int = 100,
        max_body_bytes: int = 1_048_576,
        observer: RequestObserver | None = None,
    ) -> None:
        if not base_url.lower().startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        if not api_key:
            raise ValueError("api_key must not be empty")
        if timeout_s <= 0 or max_connections < 0 or max_body_bytes <= 0:
            raise ValueError("timeout_s and max_body_bytes must be > 0, max_connections >= 0")
        self._base_url = base_url.rstrip("/")
        self._display = _display_url(self._base_url)
        self._key = _Secret(api_key)
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self._observer = observer

    def __repr__(self) -> str:
        return (
            f"EvolutionClient(base_url={self._display!r}, timeout_s={self._timeout_s!r}, "
            f"max_connections={self._max_connections!r})"
        )

    @property
    def base_url(self) -> str:
        return self._display

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session (idempotent). Called lazily by the first request too."""
        if self._session is not None and not self._session.closed:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            headers={"User-Agent": _USER_AGENT, "Accept": "application/json"},
            auto_decompress=True,
            raise_for_status=False,
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the session and its connections (idempotent)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> EvolutionClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- public calls --------------------------------------------------------------------

    async def create_instance(
        self,
        name: str,
        *,
        integration: str,
        webhook: WebhookSpec | None,
        token: str | None = None,
        number: str | None = None,
    ) -> CreatedInstance:
        """POST /instance/create (201). Never asks for a QR code (that adds a 5 s sleep).

        `token` sets the instance's own key (else the server generates one); `number` is
        required by WHATSAPP-BUSINESS only. A taken name raises `AlreadyExistsError`.
        """
        op = "create_instance"
        # The JSON of {"instanceName", "integration", "qrcode": false, ["token"], ["number"],
        # ["webhook"]}, assembled around the webhook's JSON, which is encoded once per spec.
        parts = ['{"instanceName":', _json(_check_name(name)), ',"integration":',
                 _json(integration), ',"qrcode":false']
        if token is not None:
            parts += [',"token":', _json(token)]
        if number is not None:
            parts += [',"number":', _json(number)]
        if webhook is not None:
            parts += [',"webhook":', webhook.body_json(include_empty_headers=False)]
        parts.append("}")
        extra = [token, *(webhook.headers.values() if webhook else ())]
        data = await self._call(op, "POST", "/instance/create", raw_json="".join(parts),
                                secrets=extra)
        instance = _dict(data, op, "body")
        inner = _dict(instance.get("instance"), op, "instance")
        token_value = instance.get("hash")
        if not isinstance(token_value, str) or not token_value:
            # v1 answered an object here ({"apikey": ...}); v2 a plain string.
            raise InvalidResponseError(
                "create answer has no string 'hash' (not Evolution API v2?)", operation=op
            )
        return CreatedInstance(
            instance_name=_str(inner.get("instanceName"), op, "instance.instanceName"),
            instance_id=_str(inner.get("instanceId"), op, "instance.instanceId"),
            integration=_str(inner.get("integration", integration), op, "instance.integration"),
            token=token_value,
            status=_str(inner.get("status", "unknown"), op, "instance.status"),
        )

    async def set_webhook(self, name: str, webhook: WebhookSpec) -> WebhookState:
        """POST /webhook/set/{name} (201), an upsert; returns the stored row.

        `headers` is always sent (even `{}`): the server keeps an omitted key's old value.
        """
        op = "set_webhook"
        path = f"/webhook/set/{_segment(_check_name(name))}"
        body = f'{{"webhook":{webhook.body_json(include_empty_headers=True)}}}'
        data = await self._call(op, "POST", path, raw_json=body, secrets=webhook.headers.values())
        return _webhook_state(data, op)

    async def find_webhook(self, name: str) -> WebhookState | None:
        """GET /webhook/find/{name}; None when no webhook was ever set (literal `null`)."""
        op = "find_webhook"
        data = await self._call(op, "GET", f"/webhook/find/{_segment(_check_name(name))}")
        if data is None:
            return None
        return _webhook_state(data, op)

    async def fetch_instance(self, name: str) -> InstanceInfo | None:
        """GET /instance/fetchInstances?instanceName=; None when the name is unknown.

        Only the API's own 404 (`Instance "x" not found`) means unknown; any other 404
        (no such route: a wrong base URL) raises `NotFoundError`.
        """
        op = "fetch_instance"
        try:
            data = await self._call(
                op, "GET", "/instance/fetchInstances", params={"instanceName": _check_name(name)}
            )
        except PermanentError as error:
            if _is_instance_not_found(error):
                return None
            raise  # e.g. 404 "Cannot GET ...": a wrong base URL, not a missing instance
        rows = data if isinstance(data, list) else None
        if rows is None:
            raise InvalidResponseError("fetchInstances answer is not an array", operation=op)
        for row in rows:
            item = _dict(row, op, "row")
            if item.get("name") != name:
                continue
            token = item.get("token")
            status = item.get("connectionStatus")
            return InstanceInfo(
                instance_name=name,
                instance_id=_str(item.get("id"), op, "row.id"),
                integration=_str(item.get("integration"), op, "row.integration"),
                token=token if isinstance(token, str) else None,
                connection_status=status if isinstance(status, str) else None,
            )
        return None

    async def fetch_instances(self) -> list[InstanceInfo]:
        """GET /instance/fetchInstances, every instance of this server, in one answer.

        No pagination exists, so the body may be large: it is read with its own bound
        (`FETCH_ALL_MAX_BYTES`). Each row's token is kept out of every repr.
        """
        op = "fetch_instances"
        data = await self._call(
            op, "GET", "/instance/fetchInstances", max_body_bytes=FETCH_ALL_MAX_BYTES
        )
        if not isinstance(data, list):
            raise InvalidResponseError("fetchInstances answer is not an array", operation=op)
        found: list[InstanceInfo] = []
        for row in data:
            item = _dict(row, op, "row")
            token = item.get("token")
            status = item.get("connectionStatus")
            integration = item.get("integration")
            found.append(
                InstanceInfo(
                    instance_name=_str(item.get("name"), op, "row.name"),
                    instance_id=_str(item.get("id"), op, "row.id"),
                    integration=integration if isinstance(integration, str) else "",
                    token=token if isinstance(token, str) else None,
                    connection_status=status if isinstance(status, str) else None,
                )
            )
        return found

    async def delete_instance(self, name: str) -> None:
        """DELETE /instance/delete/{name} (200). 404 raises `NotFoundError`.

        The delete is asynchronous on the server: the name stays "in use" until its cleanup
        finishes (normally ~1.5 s, up to ~20 min if a REMOVE_INSTANCE webhook keeps failing).
        """
        await self._call(
            "delete_instance", "DELETE", f"/instance/delete/{_segment(_check_name(name))}"
        )

    async def server_info(self) -> ServerInfo:
        """GET / (no key): a liveness and version probe."""
        op = "server_info"
        data = _dict(await self._call(op, "GET", "/", auth=False), op, "body")
        version = data.get("version")
        message = data.get("message")
        return ServerInfo(
            version=version if isinstance(version, str) else None,
            message=message if isinstance(message, str) else "",
        )

    async def check_key(self) -> None:
        """Prove the key works with a call that needs it; 401 raises `AuthError`."""
        try:
            await self._call(
                "check_key",
                "GET",
                "/instance/fetchInstances",
                params={"instanceName": KEY_CHECK_INSTANCE_NAME},
            )
        except PermanentError as error:
            if not _is_instance_not_found(error):  # that 404 means the key was accepted
                raise

    # -- transport -----------------------------------------------------------------------

    def _observe(self, operation: str, started: float, failure: str | None) -> None:
        if self._observer is not None:
            self._observer(operation, time.perf_counter() - started, failure)

    def _secrets(self, extra: Iterable[str | None]) -> list[str | None]:
        return [self._key.get(), *extra]

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        raw_json: str | None = None,
        auth: bool = True,
        secrets: Iterable[str | None] = (),
        max_body_bytes: int | None = None,
    ) -> Any:
        """One request: returns the parsed JSON of a 2xx answer, or raises a typed error.
        `raw_json` is the request body, already JSON (see `_json`)."""
        secret_list = self._secrets(secrets)
        started = time.perf_counter()
        try:
            answer = await self._send(
                operation, method, path, params, raw_json, auth, secret_list, max_body_bytes
            )
        except ServiceUnavailableError as error:
            self._observe(operation, started, str(error.kind))
            raise
        except EvolutionError as error:
            self._observe(operation, started, str(error.status or "error"))
            raise
        self._observe(operation, started, None if 200 <= answer.status <= 299
                      else str(answer.status))
        if not 200 <= answer.status <= 299:
            raise error_for_status(
                answer.status,
                answer.body,
                answer.content_type,
                operation,
                answer.retry_after,
                secrets=secret_list,
            )
        try:
            return json.loads(answer.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            pass
        # A 2xx whose body is not JSON (e.g. a proxy's HTML page) breaks the contract.
        raise InvalidResponseError(
            _not_json(answer), operation=operation, status=answer.status, secrets=secret_list
        )

    async def _send(
        self,
        operation: str,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        raw_json: str | None,
        auth: bool,
        secret_list: list[str | None],
        max_body_bytes: int | None = None,
    ) -> _Answer:
        await self.start()
        session = self._session
        assert session is not None  # start() guarantees it
        headers: dict[str, str] = {}
        if auth:
            headers["apikey"] = self._key.get()
        data: bytes | None = None
        if raw_json is not None:
            data = raw_json.encode()
            headers["Content-Type"] = "application/json"
        url = URL(self._base_url + path, encoded=True)
        if params:
            url = url.update_query(params)

        def fail(detail: str, kind: UnavailableKind) -> ServiceUnavailableError:
            return ServiceUnavailableError(
                detail, operation=operation, kind=kind, secrets=secret_list
            )

        try:
            async with session.request(
                method, url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                body = await self._read_bounded(resp, operation, secret_list, max_body_bytes)
                return _Answer(
                    resp.status,
                    resp.headers.get("Content-Type"),
                    resp.headers.get("Retry-After"),
                    body,
                )
        except EvolutionError:
            raise
        except TimeoutError:
            raise fail(
                f"no answer within {self._timeout_s:g} s from {self._display}", "timeout"
            ) from None
        except aiohttp.ClientConnectorError as error:
            os_error = error.os_error
            reason = (
                os.strerror(os_error.errno)
                if os_error.errno
                else os_error.strerror or type(os_error).__name__
            )
            raise fail(f"cannot connect to {self._display}: {reason}", "connect") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as error:
            raise fail(
                f"connection closed before a complete answer ({type(error).__name__})", "reset"
            ) from None
        except aiohttp.ClientOSError as error:
            raise fail(
                f"connection error: {error.strerror or type(error).__name__}", "reset"
            ) from None
        except aiohttp.InvalidURL:
            raise PermanentError(
                f"invalid URL for {path.split('/')[1] or '/'}", operation=operation
            ) from None
        except aiohttp.ClientResponseError as error:
            # The answer could not be parsed as HTTP (a broken proxy, not Evolution API).
            raise TransientError(
                f"malformed HTTP answer: {error.message}", operation=operation, secrets=secret_list
            ) from None
        except aiohttp.ClientError as error:
            raise TransientError(
                f"HTTP client error: {type(error).__name__}", operation=operation
            ) from None

    async def _read_bounded(
        self,
        resp: aiohttp.ClientResponse,
        operation: str,
        secret_list: list[str | None],
        limit_bytes: int | None = None,
    ) -> bytes:
        """Read at most `max_body_bytes` (or this call's own bound); a larger body is an error
        and drops the connection."""
        limit = limit_bytes or self._max_body_bytes
        declared = resp.content_length
        if declared is not None and declared > limit:
            resp.close()
            raise self._too_large(resp, f"{declared} bytes declared; limit {limit}", operation,
                                  secret_list)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await resp.content.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                resp.close()
                raise self._too_large(resp, f"more than {limit} bytes; limit {limit}", operation,
                                      secret_list)
        return b"".join(chunks)

    def _too_large(
        self,
        resp: aiohttp.ClientResponse,
        what: str,
        operation: str,
        secret_list: list[str | None],
    ) -> EvolutionError:
        ctype = (resp.headers.get("Content-Type") or "no content type").split(";")[0]
        detail = f"answer body too large ({ctype}, {what})"
        if resp.status >= 500:
            return error_for_status(
                resp.status,
                None,
                None,
                operation,
                resp.headers.get("Retry-After"),
                secrets=secret_list,
                detail=detail,
            )
        return InvalidResponseError(
            detail, operation=operation, status=resp.status, secrets=secret_list
        )


def _not_json(answer: _Answer) -> str:
    ctype = (answer.content_type or "no content type").split(";")[0]
    return f"answer is not JSON ({ctype}, {len(answer.body)} bytes)"


def _dict(value: Any, operation: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidResponseError(f"{what} is not a JSON object", operation=operation)
    return value


def _str(value: Any, operation: str, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidResponseError(f"{what} is not a string", operation=operation)
    return value


def _webhook_state(data: Any, operation: str) -> WebhookState:
    """Parse a Webhook row (it says `webhookByEvents`/`webhookBase64`; requests say byEvents)."""
    row = _dict(data, operation, "webhook row")
    events = row.get("events")
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise InvalidResponseError(
            "webhook row 'events' is not a list of strings", operation=operation
        )
    headers_raw = row.get("headers")
    headers: dict[str, str] = {}
    if isinstance(headers_raw, dict):
        headers = {
            str(k): v if isinstance(v, str) else json.dumps(v) for k, v in headers_raw.items()
        }
    elif headers_raw is not None:
        raise InvalidResponseError("webhook row 'headers' is not an object", operation=operation)
    enabled = row.get("enabled")
    if not isinstance(enabled, bool):
        raise InvalidResponseError("webhook row 'enabled' is not a boolean", operation=operation)
    return WebhookState(
        url=_str(row.get("url"), operation, "webhook row 'url'"),
        enabled=enabled,
        events=tuple(events),
        headers=headers,
        by_events=row.get("webhookByEvents") is True,
        base64=row.get("webhookBase64") is True,
    )
