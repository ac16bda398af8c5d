"""The client's error model, without I/O: message parsing, Retry-After, status mapping,
redaction, and the pure `WebhookState.matches` rule the worker relies on."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from listener.evolution.errors import (
    AlreadyExistsError,
    AuthError,
    EvolutionError,
    InvalidResponseError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    ServiceUnavailableError,
    TransientError,
    error_for_status,
    parse_error_message,
    parse_retry_after,
    redact,
)
from listener.evolution.models import ALL_WEBHOOK_EVENTS, WebhookSpec, WebhookState

pytestmark = pytest.mark.unit

API_KEY = "evo-global-key-6b1f2c9d"
TOKEN = "3B88E244-9BCC-4D60-9CC5-61FDF50E595E"
JSON = "application/json; charset=utf-8"


def envelope(status: int, error: str, message: object) -> bytes:
    return json.dumps({"status": status, "error": error, "response": {"message": message}}).encode()


# -- parse_error_message -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (envelope(401, "Unauthorized", "Unauthorized"), "Unauthorized"),
        (
            envelope(403, "Forbidden", ['This name "u1" is already in use.']),
            'This name "u1" is already in use.',
        ),
        (
            envelope(400, "Bad Request", [["qrcode is not of a type(s) boolean"]]),
            "qrcode is not of a type(s) boolean",
        ),
        (
            envelope(
                400,
                "Bad Request",
                [['webhook requires property "url"', 'webhook requires property "enabled"']],
            ),
            'webhook requires property "url"; webhook requires property "enabled"',
        ),
        (envelope(400, "Bad Request", ["a", ["b", "c"]]), "a; b; c"),
        (
            envelope(500, "Internal Server Error", "Cannot read properties of undefined"),
            "Cannot read properties of undefined",
        ),
        (b'{"error":true,"message":"[object Object]"}', "[object Object]"),
        (b'{"message":"upstream said no"}', "upstream said no"),
        (b'{"error":"Bad Gateway"}', "Bad Gateway"),
        (b'"just a string"', "just a string"),
        (b"[1, 2]", "[1,2]"),
        (envelope(404, "Not Found", []), "empty message"),
    ],
)
def test_parse_error_message_shapes(body: bytes, expected: str) -> None:
    assert parse_error_message(body, JSON) == expected


def test_parse_error_message_accepts_str_bodies() -> None:
    assert parse_error_message('{"response":{"message":["x"]}}', None) == "x"


@pytest.mark.parametrize("body", [None, b"", ""])
def test_parse_error_message_empty(body: bytes | str | None) -> None:
    assert parse_error_message(body, JSON) == "empty body"


def test_parse_error_message_html_from_a_proxy() -> None:
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>"
        b"\r\n</html>\r\n"
    )
    text = parse_error_message(page, "text/html")
    assert text == f"non-JSON body (text/html, {len(page)} bytes): 502 Bad Gateway"


def test_parse_error_message_html_without_title_and_plain_text() -> None:
    text = parse_error_message(b"<h1>Service   down</h1>", "text/html; charset=utf-8")
    assert text == "non-JSON body (text/html, 23 bytes): Service down"
    assert parse_error_message(b"upstream timeout\n", "text/plain") == (
        "non-JSON body (text/plain, 17 bytes): upstream timeout"
    )
    assert parse_error_message(b"\xff\xfe\x00", None).startswith(
        "non-JSON body (no content type, 3 bytes)"
    )


def test_parse_error_message_collapses_and_truncates() -> None:
    long = envelope(400, "Bad Request", ["word   " * 200])
    text = parse_error_message(long, JSON)
    assert len(text) <= 300
    assert "  " not in text
    assert text.endswith("…")


def test_parse_error_message_keeps_the_useful_ends_of_a_prisma_dump() -> None:
    prisma = (
        "\nInvalid `this.prisma.webhook.upsert()` invocation in\n"
        "<server-dir>/src/api/integrations/event/webhook/webhook.controller.ts:33:32\n\n"
        + "  filler line\n" * 60
        + "\nArgument `url` is missing."
    )
    text = parse_error_message(envelope(400, "Bad Request", [prisma]), JSON)
    assert text == (
        "Invalid `this.prisma.webhook.upsert()` invocation in … Argument `url` is missing."
    )


# -- Retry-After ---------------------------------------------------------------------------


NOW = datetime(2026, 11, 24, 6, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(seconds=90), usegmt=True), 0.0),
        ("Tue, 24 Nov 2026 06:00:30 GMT", 30.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_parse_retry_after_uses_the_clock_by_default() -> None:
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    value = parse_retry_after(future)
    assert value is not None
    assert 55.0 <= value <= 60.0


# -- error_for_status ----------------------------------------------------------------------

ALREADY = envelope(403, "Forbidden", ['This name "evo-1" is already in use.'])
INVALID = envelope(400, "Bad Request", ["Invalid integration"])
MISSING = envelope(404, "Not Found", ['The "x" instance does not exist'])
OTHER_403 = envelope(403, "Forbidden", ["Missing global api key"])


@pytest.mark.parametrize(
    ("status", "body", "operation", "expected"),
    [
        (400, INVALID, "create_instance", PermanentError),
        (401, envelope(401, "Unauthorized", "Unauthorized"), "create_instance", AuthError),
        (401, envelope(401, "Unauthorized", "Unauthorized"), "check_key", AuthError),
        (403, ALREADY, "create_instance", AlreadyExistsError),
        (403, ALREADY, "set_webhook", PermanentError),
        (403, OTHER_403, "create_instance", PermanentError),
        (404, MISSING, "delete_instance", NotFoundError),
        (405, b"", "set_webhook", PermanentError),
        (408, b"", "create_instance", TransientError),
        (409, b"", "create_instance", PermanentError),
        (413, b"", "create_instance", PermanentError),
        (422, b"", "create_instance", PermanentError),
        (429, envelope(429, "Too Many Requests", "slow down"), "create_instance", RateLimitedError),
        (500, envelope(500, "Internal Server Error", "boom"), "set_webhook", TransientError),
        (501, b"", "create_instance", TransientError),
        (502, b"<html></html>", "create_instance", ServiceUnavailableError),
        (503, b"", "server_info", ServiceUnavailableError),
        (504, b"", "create_instance", ServiceUnavailableError),
        (507, b"", "create_instance", TransientError),
        (301, b"", "create_instance", PermanentError),
        (200, b"{}", "create_instance", InvalidResponseError),
        (101, b"", "create_instance", InvalidResponseError),
    ],
)
def test_error_for_status_mapping(
    status: int, body: bytes, operation: str, expected: type[EvolutionError]
) -> None:
    error = error_for_status(status, body, JSON, operation, None)
    assert type(error) is expected
    assert error.status == status
    assert error.operation == operation


def test_error_for_status_classes_nest_as_the_policy_expects() -> None:
    assert issubclass(ServiceUnavailableError, TransientError)
    assert issubclass(RateLimitedError, TransientError)
    assert issubclass(AlreadyExistsError, PermanentError)
    assert issubclass(NotFoundError, PermanentError)
    assert not issubclass(AuthError, TransientError | PermanentError)
    assert not issubclass(InvalidResponseError, TransientError | PermanentError)


def test_rate_limited_carries_retry_after() -> None:
    error = error_for_status(429, b"", None, "create_instance", "12")
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == 12.0
    missing = error_for_status(429, b"", None, "create_instance", None)
    assert isinstance(missing, RateLimitedError)
    assert missing.retry_after_s is None


def test_service_unavailable_kind_is_http_for_gateway_statuses() -> None:
    error = error_for_status(503, b"", None, "create_instance", None)
    assert isinstance(error, ServiceUnavailableError)
    assert error.kind == "http"


def test_detail_override_replaces_the_body() -> None:
    error = error_for_status(500, b"ignored", None, "x", None, detail="too large")
    assert error.detail == "too large"


def test_error_text_and_repr() -> None:
    error = error_for_status(
        400, envelope(400, "Bad Request", [["number does not match"]]), JSON, "create_instance"
    )
    assert str(error) == "create_instance: HTTP 400: number does not match"
    assert repr(error) == (
        "PermanentError(operation='create_instance', status=400, detail='number does not match')"
    )
    down = ServiceUnavailableError("refused", operation="server_info", kind="connect")
    assert str(down) == "server_info: no HTTP answer: refused"
    assert "kind='connect'" in repr(down)


def test_errors_survive_pickling() -> None:
    error = RateLimitedError("slow", operation="create_instance", retry_after_s=3.0)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert type(clone) is RateLimitedError
    assert (clone.retry_after_s, clone.detail, str(clone)) == (3.0, "slow", str(error))


# -- secrets ---------------------------------------------------------------------------------


def test_redact_masks_every_secret_longest_first() -> None:
    text = f"key {API_KEY} token {TOKEN} prefix {API_KEY[:10]}"
    assert redact(text, [API_KEY[:10], API_KEY, TOKEN, None, ""]) == "key *** token *** prefix ***"


def test_redact_masks_generated_tokens_but_not_instance_ids() -> None:
    instance_id = "06162210-e3a3-411b-871d-77179b7a78a4"
    text = f"token {TOKEN} of instance {instance_id}"
    assert redact(text, []) == f"token *** of instance {instance_id}"


def test_redact_ignores_tiny_secrets() -> None:
    assert redact("a b c", ["a"]) == "a b c"


def test_secrets_echoed_by_the_server_never_reach_the_error() -> None:
    body = envelope(
        400,
        "Bad Request",
        [f"header apikey={API_KEY} rejected for token {TOKEN}", [f"Authorization: {TOKEN}"]],
    )
    error = error_for_status(400, body, JSON, "create_instance", secrets=[API_KEY, TOKEN])
    for text in (str(error), repr(error), error.detail, str(error.args)):
        assert API_KEY not in text
        assert TOKEN not in text
    assert "***" in error.detail


# -- WebhookSpec / WebhookState (pure rules the worker uses) ----------------------------------

EVENTS = (
    "QRCODE_UPDATED",
    "CONNECTION_UPDATE",
    "MESSAGES_UPSERT",
    "MESSAGES_UPDATE",
    "SEND_MESSAGE",
)
URL = "https://ref.supabase.co/functions/v1/evolution-webhook-handler"


def state(**overrides: object) -> WebhookState:
    values: dict[str, object] = {
        "url": URL,
        "enabled": True,
        "events": tuple(reversed(EVENTS)),
        "headers": {"Authorization": "Bearer jwt", "X-Extra": "kept"},
        "by_events": False,
        "base64": False,
    }
    values.update(overrides)
    return WebhookState(**values)  # type: ignore[arg-type]


SPEC = WebhookSpec(url=URL, events=EVENTS, headers={"Authorization": "Bearer jwt"})


def test_matches_same_config_in_any_order_with_extra_headers() -> None:
    assert state().matches(SPEC)


@pytest.mark.parametrize(
    "overrides",
    [
        {"url": URL + "/"},
        {"enabled": False},
        {"events": EVENTS[:4]},
        {"events": (*EVENTS, "CALL")},
        {"headers": {}},
        {"headers": {"Authorization": "Bearer other"}},
        {"by_events": True},
        {"base64": True},
    ],
)
def test_matches_rejects_any_difference(overrides: dict[str, object]) -> None:
    assert not state(**overrides).matches(SPEC)


def test_matches_treats_empty_events_as_all() -> None:
    everything = WebhookSpec(url=URL, events=())
    assert state(events=ALL_WEBHOOK_EVENTS, headers={}).matches(everything)
    assert not state(events=EVENTS, headers={}).matches(everything)


def test_webhook_spec_validates_what_create_does_not() -> None:
    with pytest.raises(ValueError, match="unknown webhook event"):
        WebhookSpec(url=URL, events=("messages.upsert",))
    with pytest.raises(ValueError, match="http"):
        WebhookSpec(url="ftp://x", events=EVENTS)
    assert len(ALL_WEBHOOK_EVENTS) == len(set(ALL_WEBHOOK_EVENTS)) == 31


def test_reprs_hide_header_values() -> None:
    assert "Bearer jwt" not in repr(SPEC)
    assert "Bearer jwt" not in repr(state())
