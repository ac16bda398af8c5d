"""The Evolution API client against the simulator, over real HTTP on 127.0.0.1 (no mocks).

Each failure mode the worker must tell apart is produced for real (a 429 with Retry-After,
a hang until the client's timeout, a TCP reset, a refused port, an HTML page from a proxy,
a 50 MB body, an instance created but its answer lost) and the typed error is checked,
along with the rule that no error, repr or traceback ever shows the key or a token.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import traceback
import tracemalloc
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, TypeVar

import pytest

from listener.config import WEBHOOK_EVENTS
from listener.dev.simulator import ScriptedFault, Simulator
from listener.evolution import (
    AlreadyExistsError,
    AuthError,
    CreatedInstance,
    EvolutionClient,
    EvolutionError,
    InvalidResponseError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    ServiceUnavailableError,
    TransientError,
    WebhookSpec,
)
from tests import simulator_fixtures
from tests.simulator_fixtures import unused_tcp_port

# The shared fixtures, bound here so this module does not depend on a conftest.
simulator = simulator_fixtures.simulator
evolution_client = simulator_fixtures.evolution_client

E = TypeVar("E", bound=EvolutionError)

NAME = "evo-3f0c1d2e-7a1b-4c3d-8e9f-0a1b2c3d4e5f"
WEBHOOK_SECRET = "Bearer webhook-secret-3c7f1e"
HOOK_URL = "https://ref.supabase.co/functions/v1/evolution-webhook-handler"
SPEC = WebhookSpec(url=HOOK_URL, events=WEBHOOK_EVENTS, headers={"Authorization": WEBHOOK_SECRET})
BAILEYS = "WHATSAPP-BAILEYS"


async def raises(kind: type[E], call: Awaitable[Any]) -> E:
    """Await `call`, require an error of exactly `kind`, and check it leaks nothing."""
    with pytest.raises(EvolutionError) as info:
        await call
    error = info.value
    assert type(error) is kind, repr(error)
    assert_no_secrets(error)
    return error


SECRETS: set[str] = {WEBHOOK_SECRET}


def assert_no_secrets(*values: object) -> None:
    for value in values:
        texts = [str(value), repr(value)]
        if isinstance(value, BaseException):
            texts.append(str(value.args))
            texts.append("".join(traceback.format_exception(value)))
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, f"secret leaked in {text!r}"


@pytest.fixture(autouse=True)
def _register_simulator_secrets(simulator: Simulator) -> None:
    SECRETS.add(simulator.api_key)


async def create(client: EvolutionClient, name: str = NAME) -> CreatedInstance:
    created = await client.create_instance(name, integration=BAILEYS, webhook=SPEC)
    SECRETS.add(created.token)
    return created


# -- success paths -------------------------------------------------------------------------


async def test_create_set_find_fetch(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    created = await create(evolution_client)
    stored = simulator.instances[NAME]
    assert (created.instance_name, created.instance_id) == (NAME, stored.instance_id)
    assert (created.integration, created.status) == (BAILEYS, "close")
    assert created.token == stored.token and len(created.token) == 36

    state = await evolution_client.set_webhook(NAME, SPEC)
    assert state.matches(SPEC)
    assert await evolution_client.find_webhook(NAME) == state
    assert simulator.webhooks[NAME].headers == {"Authorization": WEBHOOK_SECRET}
    assert simulator.webhooks[NAME].events == list(WEBHOOK_EVENTS)

    info = await evolution_client.fetch_instance(NAME)
    assert info is not None
    assert (info.instance_id, info.token, info.connection_status) == (
        created.instance_id,
        created.token,
        "close",
    )
    records = simulator.requests
    assert [r.operation for r in records] == [
        "create_instance",
        "set_webhook",
        "find_webhook",
        "fetch_instances",
    ]
    assert all(r.key_kind == "global" and r.headers["apikey"] == "<redacted>" for r in records)
    assert records[0].body["qrcode"] is False
    assert_no_secrets(created, info, state, SPEC, evolution_client)


async def test_find_webhook_none_when_never_set(evolution_client: EvolutionClient) -> None:
    await evolution_client.create_instance(NAME, integration=BAILEYS, webhook=None)
    assert await evolution_client.find_webhook(NAME) is None


async def test_stale_webhook_is_detected_and_replaced(
    simulator: Simulator,
    evolution_client: EvolutionClient,
) -> None:
    old = WebhookSpec(url=HOOK_URL + "/old", events=("CALL",), headers={"X-Old": "1"})
    await evolution_client.create_instance(NAME, integration=BAILEYS, webhook=old)
    found = await evolution_client.find_webhook(NAME)
    assert found is not None and not found.matches(SPEC)
    bare = WebhookSpec(url=HOOK_URL, events=WEBHOOK_EVENTS)
    state = await evolution_client.set_webhook(NAME, bare)
    assert state.matches(bare) and state.headers == {}  # headers {} sent: old ones cleared


async def test_names_are_url_quoted(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    name = "evo odd/name%20?#&=é"
    await evolution_client.create_instance(name, integration=BAILEYS, webhook=None)
    assert name in simulator.instances
    await evolution_client.set_webhook(name, SPEC)
    assert await evolution_client.find_webhook(name) is not None
    info = await evolution_client.fetch_instance(name)
    assert info is not None and info.instance_name == name
    await evolution_client.delete_instance(name)
    assert simulator.instances[name].deleting  # the delete reached this name (async cleanup)
    with pytest.raises(ValueError):
        await evolution_client.create_instance(" padded", integration=BAILEYS, webhook=None)


async def test_server_info_and_key_check(simulator: Simulator) -> None:
    async with EvolutionClient(simulator.base_url, "not-the-key-91c2") as wrong:
        SECRETS.add("not-the-key-91c2")
        info = await wrong.server_info()  # GET / needs no key
        assert (info.version, info.message) == (
            "2.3.6",
            "Welcome to the Evolution API, it is working!",
        )
        await raises(AuthError, wrong.check_key())
    assert simulator.requests[0].key_kind == "none"
    assert "apikey" not in simulator.requests[0].headers
    async with EvolutionClient(simulator.base_url, simulator.api_key) as right:
        await right.check_key()


async def test_lazy_start_and_idempotent_close(simulator: Simulator) -> None:
    client = EvolutionClient(simulator.base_url + "/", simulator.api_key)
    assert (await client.server_info()).version == "2.3.6"
    await client.close()
    await client.close()
    assert (await client.server_info()).version == "2.3.6"  # reopens on demand
    await client.close()


async def test_connections_are_reused_and_bounded(simulator: Simulator) -> None:
    async with EvolutionClient(simulator.base_url, simulator.api_key, max_connections=2) as client:
        for _ in range(10):
            await client.server_info()
        assert len({r.peer_port for r in simulator.requests}) == 1
        await asyncio.gather(*(client.fetch_instance(f"n{i}") for i in range(40)))
        assert len({r.peer_port for r in simulator.requests}) <= 2


# -- typed errors --------------------------------------------------------------------------


async def test_duplicate_name_then_adopt(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    created = await create(evolution_client)
    error = await raises(AlreadyExistsError, create(evolution_client))
    assert error.status == 403 and error.detail == f'This name "{NAME}" is already in use.'
    adopted = await evolution_client.fetch_instance(NAME)
    assert adopted is not None and adopted.token == created.token
    assert len(simulator.instances) == 1


async def test_taken_name_is_reported_before_the_key_is_checked(simulator: Simulator) -> None:
    """Guards run before auth: with a wrong key, create says 403 and only fetch says 401."""
    simulator.options.wrong_key = True
    async with EvolutionClient(simulator.base_url, simulator.api_key) as client:
        await raises(AuthError, client.create_instance(NAME, integration=BAILEYS, webhook=None))
        simulator.options.wrong_key = False
        await client.create_instance(NAME, integration=BAILEYS, webhook=None)
        simulator.options.wrong_key = True
        await raises(AlreadyExistsError, create(client))
        await raises(AuthError, client.fetch_instance(NAME))
        await raises(NotFoundError, client.find_webhook("nope"))  # 404 before 401 too
        await raises(AuthError, client.set_webhook(NAME, SPEC))


async def test_bad_request_message_shapes(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    # array: a controller check
    error = await raises(
        PermanentError, evolution_client.create_instance(NAME, integration="FOO", webhook=None)
    )
    assert (error.status, error.detail) == (400, "Invalid integration")
    # array of arrays: JSON-schema validation
    error = await raises(
        PermanentError,
        evolution_client.create_instance(NAME, integration=BAILEYS, webhook=None, number="abc"),
    )
    assert error.detail == 'number does not match pattern "^\\\\d+[\\\\.@\\\\w-]+"'
    # string: what body-parser's errors look like
    simulator.add_fault(
        ScriptedFault(operation="create_instance", status=400, message="Unexpected token")
    )
    error = await raises(PermanentError, create(evolution_client))
    assert error.detail == "Unexpected token"
    # Business without token/number: a permanent configuration problem, and rolled back.
    error = await raises(
        PermanentError,
        evolution_client.create_instance(NAME, integration="WHATSAPP-BUSINESS", webhook=None),
    )
    assert error.detail == "token is required"
    assert simulator.instances == {}


async def test_not_found(simulator: Simulator, evolution_client: EvolutionClient) -> None:
    error = await raises(NotFoundError, evolution_client.delete_instance("nope"))
    assert error.detail == 'The "nope" instance does not exist'
    await raises(NotFoundError, evolution_client.set_webhook("nope", SPEC))
    await raises(NotFoundError, evolution_client.find_webhook("nope"))
    assert await evolution_client.fetch_instance("nope") is None
    # A 404 for the route itself (wrong base URL) is not "no such instance".
    route_missing = ["Cannot GET /instance/fetchInstances?instanceName=nope"]
    simulator.add_fault(ScriptedFault(status=404, message=route_missing))
    await raises(NotFoundError, evolution_client.fetch_instance("nope"))
    simulator.add_fault(ScriptedFault(kind="html", status=404))
    await raises(NotFoundError, evolution_client.check_key())
    async with EvolutionClient(simulator.base_url + "/evolution", simulator.api_key) as wrong:
        await raises(NotFoundError, wrong.fetch_instance("nope"))
        await raises(NotFoundError, wrong.check_key())


async def test_rate_limited_with_retry_after(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    simulator.options.rate_limit_rate = 1.0
    simulator.options.retry_after_s = 7
    error = await raises(RateLimitedError, create(evolution_client))
    assert (error.status, error.retry_after_s) == (429, 7.0)
    simulator.options.rate_limit_rate = 0.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    simulator.add_fault(ScriptedFault(status=429, retry_after=when))
    error = await raises(RateLimitedError, evolution_client.fetch_instance(NAME))
    assert error.retry_after_s is not None and 25.0 <= error.retry_after_s <= 30.0
    assert simulator.instances == {}


async def test_server_error_is_transient_and_scripts_are_consumed(
    simulator: Simulator,
    evolution_client: EvolutionClient,
) -> None:
    simulator.fail_next("create_instance", 500, 500)
    for _ in range(2):
        error = await raises(TransientError, create(evolution_client))
        assert error.status == 500
    await create(evolution_client)  # the third attempt succeeds
    simulator.options.webhook_set_error_rate = 1.0
    await raises(TransientError, evolution_client.set_webhook(NAME, SPEC))


async def test_unavailable_on_503_and_outage(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    simulator.fail_next(None, 503)
    error = await raises(ServiceUnavailableError, evolution_client.server_info())
    assert (error.kind, error.status) == ("http", 503)
    simulator.start_outage()
    error = await raises(ServiceUnavailableError, evolution_client.server_info())
    assert error.detail.endswith("503 Service Temporarily Unavailable")
    assert error.detail.startswith("non-JSON body (text/html, ")
    simulator.end_outage()
    assert (await evolution_client.server_info()).version == "2.3.6"
    simulator.start_outage(0.2, mode="reset")
    error = await raises(ServiceUnavailableError, evolution_client.server_info())
    assert error.kind == "reset"
    await asyncio.sleep(0.3)
    assert (await evolution_client.server_info()).version == "2.3.6"


async def test_timeout(simulator: Simulator) -> None:
    simulator.options.hang_rate = 1.0
    async with EvolutionClient(simulator.base_url, simulator.api_key, timeout_s=0.3) as client:
        started = time.monotonic()
        error = await raises(ServiceUnavailableError, create(client))
        assert error.kind == "timeout" and error.status is None
        assert time.monotonic() - started < 1.5
    assert simulator.requests[-1].outcome == "hang"


async def test_connection_reset(simulator: Simulator, evolution_client: EvolutionClient) -> None:
    simulator.options.reset_rate = 1.0
    error = await raises(ServiceUnavailableError, create(evolution_client))
    assert error.kind == "reset"
    assert simulator.instances == {}
    # aiohttp re-sends an idempotent GET once on a dropped connection: two resets seen.
    await raises(ServiceUnavailableError, evolution_client.fetch_instance(NAME))
    assert [r.outcome for r in simulator.requests_for("fetch_instances")] == ["reset", "reset"]


async def test_connection_refused(simulator: Simulator) -> None:
    async with EvolutionClient(f"http://127.0.0.1:{unused_tcp_port()}", "k-refused-1") as client:
        error = await raises(ServiceUnavailableError, client.server_info())
        assert error.kind == "connect"
        assert error.detail.endswith(": Connection refused"), error.detail
    async with EvolutionClient(simulator.base_url, simulator.api_key) as client:
        await simulator.refuse_connections(0.3)
        error = await raises(ServiceUnavailableError, client.server_info())
        assert error.kind == "connect"
        await asyncio.sleep(0.5)
        assert (await client.server_info()).version == "2.3.6"


async def test_non_json_and_wrong_shapes(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    simulator.add_fault(ScriptedFault(kind="html", status=200))
    error = await raises(InvalidResponseError, create(evolution_client))
    assert error.status == 200 and error.detail.startswith("answer is not JSON (text/html, ")
    simulator.add_fault(ScriptedFault(kind="html", status=502))
    gateway = await raises(ServiceUnavailableError, create(evolution_client))
    assert gateway.detail.endswith("502 Bad Gateway")
    v1_answer = json.dumps(
        {"instance": {"instanceName": "x", "instanceId": "i"}, "hash": {"apikey": "k"}}
    )
    simulator.add_fault(
        ScriptedFault(kind="raw", status=201, body=v1_answer, content_type="application/json")
    )
    error = await raises(InvalidResponseError, create(evolution_client))
    assert "hash" in error.detail
    simulator.add_fault(
        ScriptedFault(kind="raw", status=200, body="[]", content_type="application/json")
    )
    await raises(InvalidResponseError, evolution_client.find_webhook(NAME))
    simulator.add_fault(
        ScriptedFault(kind="raw", status=200, body="{}", content_type="application/json")
    )
    await raises(InvalidResponseError, evolution_client.fetch_instance(NAME))


async def wait_bytes_sent(simulator: Simulator) -> int:
    for _ in range(200):
        sent = simulator.requests[-1].bytes_sent
        if sent is not None:
            return sent
        await asyncio.sleep(0.01)
    raise AssertionError("the simulator never stopped writing")


@pytest.mark.parametrize("chunked", [True, False])
async def test_huge_body_is_not_read(simulator: Simulator, chunked: bool) -> None:
    size = 50_000_000
    simulator.add_fault(ScriptedFault(kind="huge", size_bytes=size, chunked=chunked))
    gc.collect()
    tracemalloc.start()
    try:
        async with EvolutionClient(
            simulator.base_url, simulator.api_key, max_body_bytes=64 * 1024
        ) as client:
            started = time.monotonic()
            error = await raises(InvalidResponseError, client.fetch_instance(NAME))
            elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "too large" in error.detail
    assert elapsed < 2.0
    assert peak < 10_000_000, peak  # bounded: nowhere near the 50 MB offered
    assert await wait_bytes_sent(simulator) < size


async def test_huge_body_on_5xx_is_transient(simulator: Simulator) -> None:
    simulator.add_fault(ScriptedFault(kind="huge", status=500, size_bytes=5_000_000))
    async with EvolutionClient(
        simulator.base_url, simulator.api_key, max_body_bytes=1024
    ) as client:
        error = await raises(TransientError, create(client))
    assert error.status == 500 and "too large" in error.detail


async def test_created_but_answer_lost(
    simulator: Simulator, evolution_client: EvolutionClient
) -> None:
    simulator.add_fault(ScriptedFault(kind="lose_response", operation="create_instance"))
    error = await raises(ServiceUnavailableError, create(evolution_client))
    assert error.kind == "reset"
    assert NAME in simulator.instances  # the client saw a failure, the instance exists
    SECRETS.add(simulator.instances[NAME].token)
    await raises(AlreadyExistsError, create(evolution_client))
    adopted = await evolution_client.fetch_instance(NAME)
    assert adopted is not None and adopted.token == simulator.instances[NAME].token


async def test_deleted_name_stays_in_use_until_cleanup(
    simulator: Simulator,
    evolution_client: EvolutionClient,
) -> None:
    simulator.options.delete_delay_s = 60.0
    await create(evolution_client)
    await evolution_client.delete_instance(NAME)
    await raises(AlreadyExistsError, create(evolution_client))
    assert simulator.complete_deletes() == [NAME]
    await create(evolution_client)


async def test_secrets_echoed_by_the_server_are_masked(
    simulator: Simulator,
    evolution_client: EvolutionClient,
) -> None:
    created = await create(evolution_client)
    echo = f"bad key {simulator.api_key}, header {WEBHOOK_SECRET}, token {created.token}"
    simulator.add_fault(ScriptedFault(operation="set_webhook", status=400, message=[echo]))
    error = await raises(PermanentError, evolution_client.set_webhook(NAME, SPEC))
    assert error.detail == "bad key ***, header ***, token ***"
    simulator.add_fault(ScriptedFault(operation="create_instance", status=500, message=echo))
    transient = await raises(
        TransientError,
        evolution_client.create_instance(
            "evo-x", integration=BAILEYS, webhook=SPEC, token="own-token-77aa"
        ),
    )
    assert "own-token-77aa" not in str(transient) and simulator.api_key not in str(transient)


@pytest.fixture
async def many_errors(simulator: Simulator) -> AsyncIterator[list[EvolutionError]]:
    errors: list[EvolutionError] = []
    yield errors
    for error in errors:
        assert_no_secrets(error)


async def test_every_failure_kind_keeps_secrets_out(
    simulator: Simulator,
    many_errors: list[EvolutionError],
) -> None:
    async with EvolutionClient(simulator.base_url, simulator.api_key, timeout_s=0.3) as client:
        created = await create(client)
        for fault in (
            ScriptedFault(status=401),
            ScriptedFault(status=404),
            ScriptedFault(status=500),
            ScriptedFault(status=429),
            ScriptedFault(status=503),
            ScriptedFault(kind="reset"),
            ScriptedFault(kind="hang"),
            ScriptedFault(kind="html", status=200),
            ScriptedFault(kind="huge", size_bytes=3_000_000),
        ):
            simulator.add_fault(fault)
            with pytest.raises(EvolutionError) as info:
                await client.set_webhook(NAME, SPEC)
            many_errors.append(info.value)
        assert len({type(e) for e in many_errors}) == 6
        assert_no_secrets(client, created)
