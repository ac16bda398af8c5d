"""The simulator answers like the real Evolution API v2.3.6, checked against recorded traffic.

`observed_exchanges` in the contract are 111 real request/answer pairs, in the order they
were made. They are replayed here, in order, over HTTP against one fresh simulator, and each
answer is compared: the status; for error envelopes `status`, `error`, the shape of
`response.message` (string, array, array of arrays) and its text; for success bodies the
same keys and values, where values that cannot repeat are compared by *identity*: a new
instance id, generated token or row id must be consistent with every later answer (the
id the simulator gave u2 at creation must come back in u2's fetch rows, webhook rows,
error texts ...), and timestamps must be ISO-8601.

Honest adjustments, each listed below with its reason: `BEFORE` (time passing or a server
restart, which happened between two recorded exchanges), `RECONSTRUCTED` (exchanges whose
request was not recorded but follows from the label and the answer) and `LEFT_OUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator

from listener.config import WEBHOOK_EVENTS as CONFIG_EVENTS
from listener.dev.simulator import (
    INSTANCE_SCHEMA,
    WEBHOOK_EVENTS,
    WEBHOOK_SCHEMA,
    Simulator,
    SimulatorOptions,
    SimulatorThread,
    build_parser,
    options_from_args,
    running_simulator,
)
from listener.dev.simulator.schema import CREATE_FLAT_EVENTS, js_json_error
from listener.evolution import (
    ALL_WEBHOOK_EVENTS,
    EvolutionClient,
    ServiceUnavailableError,
    TransientError,
    WebhookSpec,
)
from tests import simulator_fixtures

# The shared fixture, bound here so this module does not depend on a conftest.
evolution_contract = simulator_fixtures.evolution_contract

# Exchanges not replayed at all, with the reason. Empty: every recorded exchange is replayed
# (three of them reconstructed, see RECONSTRUCTED).
LEFT_OUT: dict[str, str] = {}

# Exchanges whose request was not recorded (method/path None). What is sent instead, and why
# that is the request the answer belongs to.
RECONSTRUCTED: dict[str, str] = {
    "race-concurrent-create-x3": (
        "three concurrent POST /instance/create for race1; the body is rebuilt from the "
        "webhook row later found for race1 (url /hook/race1, events [INSTANCE_CREATE], no "
        "custom token since its hash is a generated UUID). It is replayed just before "
        "'fetch-race1': the list records the race after the checks that found race1."
    ),
    "create-with-authorization-bearer-instead-of-apikey": (
        "POST /instance/create with `Authorization: Bearer <global key>` and no apikey, "
        "for a new name (u41; a taken name would have been 403)"
    ),
    "create-malformed-json": (
        "POST /instance/create with the body `{bad json}`: V8's message 'Expected property "
        "name or '}' in JSON at position 1' means a '{' followed by a non-quote"
    ),
}
RACE = "race-concurrent-create-x3"
RACE_BEFORE = "fetch-race1"
RACE_BODY = {
    "instanceName": "race1",
    "integration": "WHATSAPP-BAILEYS",
    "webhook": {"url": "http://127.0.0.1:18999/hook/race1", "events": ["INSTANCE_CREATE"]},
}

async def _pass_time(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _restart(sim: Simulator) -> None:
    sim.restart()


# What happened on the real server between two recorded exchanges, replayed just before the
# labelled exchange. The simulator runs with DEFAULT options: deleted names stay "in use" for
# its default delete delay (1 s; recorded: in use a few ms after, gone 1.5 s after), and u20's
# delete is held by its REMOVE_INSTANCE delivery to the receiver answering 500, retried.
BEFORE: dict[str, tuple[str, Callable[[Simulator], Awaitable[None]]]] = {
    "conn-state-u1-1.5s-after-delete": (
        "1.5 s passed: u1's delete cleanup finished by itself",
        lambda sim: _pass_time(1.5),
    ),
    "fetch-by-instanceId": (
        "1.5 s passed since u30's delete (its webhook does not subscribe REMOVE_INSTANCE)",
        lambda sim: _pass_time(1.5),
    ),
    "after-restart-conn-state-u20-(delete-was-pending)": (
        "the server restarted; u20's delete was still pending (its webhook kept failing)",
        _restart,
    ),
}

# Values that identify something new (compared by consistent identity, not equality).
IDENTITY_KEYS = frozenset({"id", "instanceId", "hash", "token"})
TIMESTAMP_KEYS = frozenset({"createdAt", "updatedAt"})
# Offline Baileys flaps between close and connecting on its own; only the vocabulary is fixed.
STATE_KEYS = frozenset({"state", "connectionStatus"})
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UPPER_UUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$")
TRUNCATED = re.compile(r"array of (\d+) instance rows")


class Identities:
    """A bijection between recorded and simulated identifiers, built while replaying."""

    def __init__(self) -> None:
        self.sim_to_rec: dict[str, str] = {}
        self.rec_to_sim: dict[str, str] = {}

    def match(self, sim: Any, rec: Any) -> bool:
        if not isinstance(sim, str) or not isinstance(rec, str):
            return bool(sim == rec)
        if UPPER_UUID.match(rec) and not UPPER_UUID.match(sim):
            return False  # a generated token must look generated
        if sim in self.sim_to_rec:
            return self.sim_to_rec[sim] == rec
        if rec in self.rec_to_sim:
            return False
        self.sim_to_rec[sim] = rec
        self.rec_to_sim[rec] = sim
        return True

    def to_sim(self, text: str) -> str:
        for rec, sim in self.rec_to_sim.items():
            text = text.replace(rec, sim)
        return text

    def to_rec(self, text: str) -> str:
        for sim, rec in self.sim_to_rec.items():
            text = text.replace(sim, rec)
        return text


def message_shape(message: Any) -> str:
    if isinstance(message, str):
        return "string"
    if isinstance(message, list) and all(isinstance(m, str) for m in message):
        return "array"
    if isinstance(message, list) and all(
        isinstance(m, list) and all(isinstance(x, str) for x in m) for m in message
    ):
        return "array of arrays"
    return "other"


def is_envelope(value: Any) -> bool:
    """An error envelope (delete/logout successes have the same keys, with status 'SUCCESS')."""
    return (
        isinstance(value, dict)
        and set(value) == {"status", "error", "response"}
        and isinstance(value["status"], int)
    )


def compare(sim: Any, rec: Any, ids: Identities, path: str, problems: list[str]) -> None:
    """Structural comparison; identity/time/state keys by their rule, the rest by value."""
    if isinstance(rec, dict):
        if not isinstance(sim, dict):
            problems.append(f"{path}: expected an object, got {json.dumps(sim)[:80]}")
            return
        if set(sim) != set(rec):
            problems.append(f"{path}: keys differ: +{set(sim) - set(rec)} -{set(rec) - set(sim)}")
        for key in rec.keys() & sim.keys():
            where = f"{path}.{key}"
            if key in IDENTITY_KEYS and isinstance(rec[key], str):
                if not ids.match(sim[key], rec[key]):
                    problems.append(f"{where}: identity mismatch {sim[key]!r} vs {rec[key]!r}")
            elif key in TIMESTAMP_KEYS and isinstance(rec[key], str):
                if not (isinstance(sim[key], str) and ISO.match(sim[key])):
                    problems.append(f"{where}: not an ISO timestamp: {sim[key]!r}")
            elif key in STATE_KEYS:
                if sim[key] not in ("close", "connecting", "open"):
                    problems.append(f"{where}: bad state {sim[key]!r}")
            else:
                compare(sim[key], rec[key], ids, where, problems)
    elif isinstance(rec, list):
        if not isinstance(sim, list) or len(sim) != len(rec):
            problems.append(f"{path}: expected a list of {len(rec)}, got {json.dumps(sim)[:80]}")
            return
        for index, (s, r) in enumerate(zip(sim, rec, strict=True)):
            compare(s, r, ids, f"{path}[{index}]", problems)
    elif sim != rec or type(sim) is not type(rec):
        problems.append(f"{path}: {sim!r} != {rec!r}")


def compare_envelope(sim: Any, rec: dict[str, Any], ids: Identities, problems: list[str]) -> None:
    if not is_envelope(sim):
        problems.append(f"expected an error envelope, got {json.dumps(sim)[:120]}")
        return
    for key in ("status", "error"):
        if sim[key] != rec[key]:
            problems.append(f"{key}: {sim[key]!r} != {rec[key]!r}")
    got, want = sim["response"]["message"], rec["response"]["message"]
    if message_shape(got) != message_shape(want):
        problems.append(f"message shape {message_shape(got)} != {message_shape(want)}: {got!r}")
        return
    got_text = ids.to_rec(json.dumps(got))
    if "prisma" in json.dumps(want):
        # The Prisma dump embeds server paths and the request; compare its first and last line.
        got_lines = [line for line in got[0].splitlines() if line.strip()]
        want_lines = [line for line in want[0].splitlines() if line.strip()]
        if (got_lines[0], got_lines[-1]) != (want_lines[0], want_lines[-1]):
            problems.append(f"prisma message differs: {got_lines[0]!r} … {got_lines[-1]!r}")
    elif got_text != json.dumps(want):
        problems.append(f"message {got_text} != {json.dumps(want)}")


RECORDED_RECEIVER = "127.0.0.1:18999"


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[str]:
    """The recording's webhook receiver (127.0.0.1:18999 there), on a free port here:
    `/fail500/...` answers 500, `/fail404/...` 404, anything else 200. Its address replaces
    the recorded one in request bodies, and the recorded one is put back in answers."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if request.path.startswith("/fail500"):
            return web.Response(status=500)
        if request.path.startswith("/fail404"):
            return web.Response(status=404)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Replayer:
    def __init__(
        self,
        sim: Simulator,
        session: aiohttp.ClientSession,
        contract: dict[str, Any],
        receiver: str = RECORDED_RECEIVER,
    ):
        self.sim = sim
        self.session = session
        self.receiver = receiver
        self.ids = Identities()
        self.envelope_schema = Draft202012Validator(
            contract["conventions"]["error_envelope_schema"]
        )
        by_name = {e["name"]: e for e in contract["endpoints"]}
        self.webhook_row = Draft202012Validator(
            by_name["setWebhook"]["responses"]["success"]["schema"]
        )

    def headers(self, apikey: str | None) -> dict[str, str]:
        if apikey is None:
            return {}
        return {"apikey": self.sim.api_key if apikey == "<GLOBAL>" else apikey}

    async def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        url = self.sim.base_url + self.ids.to_sim(path)
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            data = data.replace(RECORDED_RECEIVER.encode(), self.receiver.encode())
            headers = {**headers, "Content-Type": "application/json"}
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text.replace(self.receiver, RECORDED_RECEIVER))

    async def exchange(self, ex: dict[str, Any]) -> list[str]:
        label = ex["label"]
        if label == RACE:
            return await self.race(ex)
        if label == "create-with-authorization-bearer-instead-of-apikey":
            headers = {"Authorization": f"Bearer {self.sim.api_key}"}
            body = {"instanceName": "u41", "integration": "WHATSAPP-BAILEYS"}
            status, answer = await self.send("POST", "/instance/create", headers, body)
        elif label == "create-malformed-json":
            status, answer = await self.send(
                "POST", "/instance/create", self.headers("<GLOBAL>"), raw=b"{bad json}"
            )
        else:
            status, answer = await self.send(
                ex["method"], ex["path"], self.headers(ex["apikey"]), ex["request_body"]
            )
        return self.check(ex, status, answer)

    def check(self, ex: dict[str, Any], status: int, answer: Any) -> list[str]:
        problems: list[str] = []
        recorded = ex["response"]
        if isinstance(recorded, str):
            recorded = json.loads(recorded)
        if status != ex["status"]:
            problems.append(f"status {status} != {ex['status']}: {json.dumps(answer)[:200]}")
        if is_envelope(recorded):
            problems.extend(
                f"schema: {e.message}" for e in self.envelope_schema.iter_errors(answer)
            )
            compare_envelope(answer, recorded, self.ids, problems)
        elif isinstance(recorded, dict) and "_truncated" in recorded:
            count = int(TRUNCATED.search(recorded["_truncated"]).group(1))  # type: ignore[union-attr]
            if not isinstance(answer, list) or len(answer) != count:
                problems.append(f"expected {count} rows, got {len(answer)}")
            elif set(answer[0]) != set(recorded["first"]):
                problems.append("row keys differ")
        else:
            compare(answer, recorded, self.ids, "body", problems)
            if ex["path"] and ex["path"].startswith("/webhook/") and answer is not None:
                problems.extend(
                    f"row schema: {e.message}" for e in self.webhook_row.iter_errors(answer)
                )
        return problems

    async def race(self, ex: dict[str, Any]) -> list[str]:
        results = await asyncio.gather(
            *(
                self.send("POST", "/instance/create", self.headers("<GLOBAL>"), RACE_BODY)
                for _ in range(3)
            )
        )
        problems: list[str] = []
        recorded = sorted(ex["response"], key=lambda r: r["status"])
        got = sorted(results, key=lambda r: r[0])
        if [s for s, _ in got] != [r["status"] for r in recorded]:
            problems.append(f"race statuses {[s for s, _ in got]}")
            return problems
        created = got[0][1]
        want = recorded[0]["body"]
        if not self.ids.match(created["instance"]["instanceId"], want["instanceId"]):
            problems.append("race: instanceId identity")
        if not self.ids.match(created["hash"], want["hash"]):
            problems.append("race: hash identity")
        for (_, body), rec in zip(got[1:], recorded[1:], strict=True):
            compare_envelope(body, rec["body"], self.ids, problems)
        return problems


def ordered(exchanges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded order, with the race moved before the first check that relies on it."""
    race = next(e for e in exchanges if e["label"] == RACE)
    out: list[dict[str, Any]] = []
    for ex in exchanges:
        if ex["label"] == RACE:
            continue
        if ex["label"] == RACE_BEFORE:
            out.append(race)
        out.append(ex)
    return out


async def test_replay_observed_exchanges(evolution_contract: dict[str, Any]) -> None:
    exchanges = evolution_contract["observed_exchanges"]
    labels = [e["label"] for e in exchanges]
    assert len(labels) == len(set(labels)) == 111
    assert set(LEFT_OUT) <= set(labels)
    assert set(RECONSTRUCTED) <= set(labels)
    assert set(BEFORE) <= set(labels)
    unrecorded = {e["label"] for e in exchanges if e["method"] is None}
    assert unrecorded <= set(RECONSTRUCTED) | set(LEFT_OUT), unrecorded - set(RECONSTRUCTED)

    failures: dict[str, list[str]] = {}
    replayed = 0
    options = SimulatorOptions()  # the defaults: what `evolution-listener simulator` runs
    assert options_from_args(build_parser().parse_args([])) == options
    async with (
        webhook_receiver() as receiver,
        running_simulator(options) as sim,
        aiohttp.ClientSession() as session,
    ):
        replayer = Replayer(sim, session, evolution_contract, receiver)
        for ex in ordered(exchanges):
            if ex["label"] in LEFT_OUT:
                continue
            if ex["label"] in BEFORE:
                await BEFORE[ex["label"]][1](sim)
            problems = await replayer.exchange(ex)
            replayed += 1
            if problems:
                failures[ex["label"]] = problems
    assert replayed == 111 - len(LEFT_OUT)
    assert not failures, json.dumps(failures, indent=1)


async def test_replay_catches_a_wrong_answer(evolution_contract: dict[str, Any]) -> None:
    """The comparison is not vacuous: a simulator answering differently is caught."""
    by_label = {e["label"]: e for e in evolution_contract["observed_exchanges"]}
    async with running_simulator(SimulatorOptions(seed=1)) as sim, aiohttp.ClientSession() as s:
        replayer = Replayer(sim, s, evolution_contract)
        # create-duplicate without the instance existing: 201 instead of 403.
        assert await replayer.exchange(by_label["create-duplicate"])
        # The same instance id must not stand for two recorded ids.
        first = await replayer.exchange(by_label["create-minimal"])
        assert first  # u1 already exists now: 403 instead of 201
        ids = Identities()
        assert ids.match("a", "x") and not ids.match("a", "y") and not ids.match("b", "x")


def strip_doc(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: strip_doc(v)
            for k, v in value.items()
            if k not in ("$schema", "title", "description", "$id")
        }
    if isinstance(value, list):
        return [strip_doc(v) for v in value]
    return value


def test_simulator_schemas_are_the_servers(evolution_contract: dict[str, Any]) -> None:
    by_name = {e["name"]: e for e in evolution_contract["endpoints"]}
    create = by_name["createInstance"]["request_schema_as_validated"]
    webhook = by_name["setWebhook"]["request_schema_as_validated"]
    assert strip_doc(INSTANCE_SCHEMA) == strip_doc(create)
    assert strip_doc(WEBHOOK_SCHEMA) == strip_doc(webhook)
    events = evolution_contract["events"]
    assert list(WEBHOOK_EVENTS) == events["config_names_webhook_set"]
    assert list(ALL_WEBHOOK_EVENTS) == events["config_names_webhook_set"]
    assert list(CREATE_FLAT_EVENTS) == events["config_names_create_flat_webhookEvents"]
    assert set(CONFIG_EVENTS) <= set(ALL_WEBHOOK_EVENTS)


def test_malformed_json_message_matches_v8() -> None:
    assert js_json_error("{bad json}") == "Expected property name or '}' in JSON at position 1"
    assert js_json_error('{"a" 1}') == "Expected ':' after property name in JSON at position 5"
    assert (
        js_json_error('{"a":1') == "Expected ',' or '}' after property value in JSON at position 6"
    )
    assert js_json_error("") == "Unexpected end of JSON input"


async def test_client_request_bodies_follow_the_contract(
    evolution_contract: dict[str, Any],
) -> None:
    """Every body the client sends validates against the contract's effective schemas."""
    by_name = {e["name"]: e for e in evolution_contract["endpoints"]}
    create_schema = Draft202012Validator(by_name["createInstance"]["request_schema"])
    webhook_schema = Draft202012Validator(by_name["setWebhook"]["request_schema"])
    url = "https://ref.supabase.co/functions/v1/evolution-webhook-handler"
    with_auth = WebhookSpec(url=url, events=CONFIG_EVENTS, headers={"Authorization": "Bearer j"})
    without = WebhookSpec(url=url, events=CONFIG_EVENTS)
    async with (
        running_simulator(SimulatorOptions(seed=3)) as sim,
        EvolutionClient(sim.base_url, sim.api_key) as client,
    ):
        await client.create_instance("evo-a", integration="WHATSAPP-BAILEYS", webhook=with_auth)
        await client.create_instance("evo-b", integration="WHATSAPP-BAILEYS", webhook=without)
        await client.create_instance("evo-c", integration="EVOLUTION", webhook=None, token="t-c1")
        await client.set_webhook("evo-a", with_auth)
        await client.set_webhook("evo-b", without)
        creates = [r.body for r in sim.requests_for("create_instance")]
        sets = [r.body for r in sim.requests_for("set_webhook")]
    assert len(creates) == 3 and len(sets) == 2
    for body in creates:
        assert not list(create_schema.iter_errors(body)), body
        assert body["qrcode"] is False
    for body in sets:
        assert not list(webhook_schema.iter_errors(body)), body
        assert body["webhook"]["enabled"] is True
    assert "headers" not in creates[1]["webhook"]  # empty headers are omitted at create ...
    assert sets[1]["webhook"]["headers"] == {}  # ... but sent on set, to clear stale ones
    # The validators are strict enough to fail: a v1-style body does not pass.
    assert list(create_schema.iter_errors({"instanceName": "x", "webhook": "http://x"}))
    assert list(webhook_schema.iter_errors({"webhook": {"enabled": True, "url": "x"}}))


async def test_simulator_answers_quickly_under_load() -> None:
    """Hundreds of concurrent requests: no per-request logging, no O(n) hot path."""
    async with (
        running_simulator(SimulatorOptions(seed=5)) as sim,
        EvolutionClient(sim.base_url, sim.api_key, max_connections=50) as client,
    ):
        spec = WebhookSpec(url="http://127.0.0.1:9/h", events=CONFIG_EVENTS)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(
            *(
                client.create_instance(f"evo-{i}", integration="WHATSAPP-BAILEYS", webhook=spec)
                for i in range(300)
            )
        )
        await asyncio.gather(*(client.fetch_instance(f"evo-{i}") for i in range(300)))
        elapsed = loop.time() - started
        assert len(sim.instances) == 300
        assert sim.log.total == 600
        assert elapsed < 5.0, elapsed


def test_cli_main_serves_until_sigterm() -> None:
    """`main()` binds 127.0.0.1 by default, serves, and exits 0 on SIGTERM."""
    code = (
        "import sys; from listener.dev.simulator import main; "
        "sys.exit(main(['--port', '0', '--api-key', 'cli-key', '--seed', '1']))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            assert match, line
            base = match.group(0)

            async def probe() -> tuple[int, int]:
                async with aiohttp.ClientSession() as s:
                    async with s.get(base + "/") as root:
                        await root.read()
                    async with s.get(
                        base + "/instance/fetchInstances", headers={"apikey": "cli-key"}
                    ) as fetch:
                        return root.status, fetch.status

            assert asyncio.run(probe()) == (200, 200)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.poll() is None:
                proc.kill()


# -- the simulator's own switches ------------------------------------------------------------


async def test_control_endpoints_over_http() -> None:
    async with (
        running_simulator(SimulatorOptions(seed=11, api_key="ctl-key")) as sim,
        aiohttp.ClientSession() as http,
        EvolutionClient(sim.base_url, sim.api_key) as client,
    ):
        base = sim.base_url

        async def control(path: str, body: Any = None) -> tuple[int, Any]:
            method = "GET" if body is None else "POST"
            async with http.request(method, base + path, json=body) as resp:
                return resp.status, await resp.json()

        status, state = await control("/_sim/state")
        assert status == 200 and state["options"]["api_key"] == "***"
        status, state = await control("/_sim/control", {"error_rate": 1, "latency_ms": 5})
        assert status == 200 and state["options"]["error_rate"] == 1.0
        with pytest.raises(TransientError):
            await client.server_info()
        status, _ = await control(
            "/_sim/control",
            {"error_rate": 0, "fail_next": {"operation": "root", "statuses": [503]}},
        )
        with pytest.raises(ServiceUnavailableError):
            await client.server_info()
        await client.server_info()
        status, answer = await control("/_sim/control", {"error_rate": 2})
        assert status == 400 and "error_rate" in answer["error"]
        assert sim.options.error_rate == 0.0  # nothing applied on error
        status, answer = await control("/_sim/control", {"eror_rate": 1})
        assert status == 400 and "eror_rate" in answer["error"]
        await control("/_sim/control", {"outage": True, "outage_s": 0.2})
        with pytest.raises(ServiceUnavailableError):
            await client.server_info()
        await asyncio.sleep(0.3)
        await client.server_info()

        await client.create_instance("evo-1", integration="WHATSAPP-BAILEYS", webhook=None)
        status, log = await control("/_sim/requests?since=0&limit=100")
        assert status == 200 and log["total"] == len(log["requests"]) == 6
        create = log["requests"][-1]
        assert create["operation"] == "create_instance" and create["instance"] == "evo-1"
        assert create["headers"]["apikey"] == "<redacted>" and create["key_kind"] == "global"
        assert "ctl-key" not in json.dumps(log)
        status, log = await control(f"/_sim/requests?since={create['seq'] - 1}")
        assert [r["seq"] for r in log["requests"]] == [create["seq"]]

        await control("/_sim/control", {"delete_delay_s": 30})
        await client.delete_instance("evo-1")
        status, state = await control("/_sim/state")
        assert state["pending_deletes"] == ["evo-1"]
        await control("/_sim/control", {"complete_deletes": True})
        assert "evo-1" not in sim.instances
        status, state = await control("/_sim/reset", {})
        assert state["instances"] == 0 and state["requests_total"] == 0
        assert sim.options.delete_delay_s == 1.0  # back to the options given at start


async def test_rates_are_deterministic_per_seed() -> None:
    async def pattern(seed: int) -> list[int]:
        options = SimulatorOptions(seed=seed, error_rate=0.3, rate_limit_rate=0.2)
        async with running_simulator(options) as sim, aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(40):
                async with http.get(sim.base_url + "/") as resp:
                    statuses.append(resp.status)
            return statuses

    first, again, other = await pattern(42), await pattern(42), await pattern(43)
    assert first == again
    assert first != other
    assert {200, 429, 500} == set(first)


async def test_hanging_requests_do_not_block_shutdown() -> None:
    sim_options = SimulatorOptions(hang_rate=1.0)
    async with aiohttp.ClientSession() as http:
        async with running_simulator(sim_options) as sim:
            pending = asyncio.ensure_future(http.get(sim.base_url + "/"))
            while not sim.requests:
                await asyncio.sleep(0.01)
            started = asyncio.get_running_loop().time()
        assert asyncio.get_running_loop().time() - started < 3.0
        with pytest.raises(aiohttp.ClientError):
            await pending
        assert sim.requests[0].outcome == "hang"


def test_simulator_in_a_thread() -> None:
    with SimulatorThread(SimulatorOptions(seed=2)) as background:
        background.call(background.simulator.fail_next, "root", 500)

        async def two_calls() -> list[int]:
            async with aiohttp.ClientSession() as http:
                out = []
                for _ in range(2):
                    async with http.get(background.base_url + "/") as resp:
                        out.append(resp.status)
                return out

        assert asyncio.run(two_calls()) == [500, 200]
        assert background.call(lambda: len(background.simulator.requests)) == 2


async def test_restart_revives_pending_deletes() -> None:
    async with (
        running_simulator(SimulatorOptions(delete_delay_s=60)) as sim,
        EvolutionClient(sim.base_url, sim.api_key) as client,
    ):
        await client.create_instance("evo-r", integration="WHATSAPP-BAILEYS", webhook=None)
        await client.delete_instance("evo-r")
        assert sim.restart() == ["evo-r"]
        assert sim.complete_deletes() == []
        info = await client.fetch_instance("evo-r")
        assert info is not None and info.connection_status == "connecting"
