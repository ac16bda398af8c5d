"""The client's request bodies, assembled from pre-encoded parts, are byte for byte what
`json.dumps` of the documented objects gives: the saving must not change the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from listener.evolution.client import EvolutionClient, _Answer
from listener.evolution.models import WebhookSpec

pytestmark = pytest.mark.unit

CREATED = json.dumps({"instance": {"instanceName": "n", "instanceId": "i", "status": "close"},
                      "hash": "tok"}).encode()
STORED = json.dumps({"url": "https://x.test/hook", "enabled": True, "events": ["CALL"],
                     "headers": {}, "webhookByEvents": False, "webhookBase64": False}).encode()


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _Capture(EvolutionClient):
    """Records what `_send` would put on the wire; answers like the server."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "key")
        self.sent: list[bytes | None] = []

    async def _send(self, operation: str, method: str, path: str, params: Any,
                    raw_json: str | None, auth: bool, secret_list: Any,
                    max_body_bytes: int | None = None) -> _Answer:
        self.sent.append(None if raw_json is None else raw_json.encode())
        body = CREATED if operation == "create_instance" else STORED
        return _Answer(201, "application/json", None, body)


SPECS = [
    WebhookSpec(url="https://x.test/hook", events=("CALL", "QRCODE_UPDATED")),
    WebhookSpec(url="https://x.test/hook?a=1&b=\"q\"", events=(),
                headers={"Authorization": "Bearer s3cr\u00e9t", "X-Other": "v"}),
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(("name", "token", "number"), [
    ("evo-1b4e28ba-2fa1-11d2-883f-0016d3cca427", None, None),
    ("evo-\u00fc\"quoted\"\\slash", "tok\u00e9n", "5511999999999"),
])
async def test_create_body_is_the_documented_object(
        spec: WebhookSpec, name: str, token: str | None, number: str | None) -> None:
    client = _Capture()
    await client.create_instance(name, integration="WHATSAPP-BAILEYS", webhook=spec,
                                 token=token, number=number)
    expected: dict[str, Any] = {"instanceName": name, "integration": "WHATSAPP-BAILEYS",
                                "qrcode": False}
    if token is not None:
        expected["token"] = token
    if number is not None:
        expected["number"] = number
    expected["webhook"] = spec.body(include_empty_headers=False)
    assert client.sent == [_compact(expected)]


async def test_create_body_without_webhook() -> None:
    client = _Capture()
    await client.create_instance("evo-x", integration="EVOLUTION", webhook=None)
    assert client.sent == [_compact({"instanceName": "evo-x", "integration": "EVOLUTION",
                                     "qrcode": False})]


@pytest.mark.parametrize("spec", SPECS)
async def test_set_webhook_body_always_carries_headers(spec: WebhookSpec) -> None:
    client = _Capture()
    await client.set_webhook("evo-x", spec)
    await client.set_webhook("evo-y", spec)  # the second comes from the spec's cache
    expected = _compact({"webhook": spec.body(include_empty_headers=True)})
    assert client.sent == [expected, expected]
    assert b'"headers":' in expected


def test_body_json_is_cached_per_variant_and_not_part_of_equality() -> None:
    spec = SPECS[1]
    first = spec.body_json(include_empty_headers=False)
    assert spec.body_json(include_empty_headers=False) is first
    assert json.loads(first) == spec.body(include_empty_headers=False)
    twin = WebhookSpec(url=spec.url, events=spec.events, headers=dict(spec.headers))
    assert twin == spec
    assert "s3cr" not in repr(spec)
