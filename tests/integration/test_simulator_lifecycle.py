"""The simulator's instance life beyond single requests: the asynchronous delete held by a
REMOVE_INSTANCE delivery, DEL_INSTANCE, changes behind the service's back, several servers."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from listener.dev.simulator import (
    SimulatorOptions,
    SimulatorThread,
    running_simulator,
    running_simulators,
    simulator_threads,
)
from listener.dev.simulator.deliveries import is_loopback_url, retry_delays
from listener.evolution import EvolutionClient, NotFoundError, WebhookSpec


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[str], dict[str, int]]]:
    """A webhook receiver: answers `status["code"]`, records the event names it got."""
    events: list[str] = []
    status = {"code": 200}

    async def answer(request: web.Request) -> web.Response:
        events.append((await request.json())["event"])
        return web.Response(status=status["code"])

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", events, status
    finally:
        await runner.cleanup()


async def _create(client: EvolutionClient, name: str, url: str | None = None) -> None:
    hook = None if url is None else WebhookSpec(url=url, events=("REMOVE_INSTANCE",))
    await client.create_instance(name, integration="WHATSAPP-BAILEYS", webhook=hook)


async def test_default_delete_keeps_the_name_in_use_for_a_moment() -> None:
    async with (
        running_simulator() as sim,
        EvolutionClient(sim.base_url, sim.api_key) as client,
    ):
        await _create(client, "d1")
        await client.delete_instance("d1")
        assert await client.fetch_instance("d1") is not None  # listed right after
        assert [i["name"] for i in sim.list_instances()] == ["d1"]
        assert sim.list_instances()[0]["deleting"] is True
        await asyncio.sleep(1.2)
        assert await client.fetch_instance("d1") is None
        await _create(client, "d1")  # the name is free again


async def test_a_failing_remove_webhook_holds_the_delete_until_it_is_delivered(
    receiver: tuple[str, list[str], dict[str, int]],
) -> None:
    url, events, status = receiver
    status["code"] = 500
    options = SimulatorOptions(delete_delay_s=0.1, webhook_retry_initial_s=0.3)
    async with (
        running_simulator(options) as sim,
        EvolutionClient(sim.base_url, sim.api_key) as client,
    ):
        await _create(client, "h1", url)
        await client.delete_instance("h1")
        await asyncio.sleep(0.5)  # first attempt failed, second not yet due or failed
        assert await client.fetch_instance("h1") is not None
        status["code"] = 200
        for _ in range(40):
            if await client.fetch_instance("h1") is None:
                break
            await asyncio.sleep(0.1)
        assert await client.fetch_instance("h1") is None
        assert events[0] == "remove.instance" and len(events) >= 2


async def test_a_restart_during_a_held_delete_brings_the_instance_back(
    receiver: tuple[str, list[str], dict[str, int]],
) -> None:
    url, _, status = receiver
    status["code"] = 503
    async with (
        running_simulator(SimulatorOptions(delete_delay_s=0.05)) as sim,
        EvolutionClient(sim.base_url, sim.api_key) as client,
    ):
        await _create(client, "r1", url)
        await client.delete_instance("r1")
        assert sim.restart() == ["r1"]
        await asyncio.sleep(0.2)
        info = await client.fetch_instance("r1")
        assert info is not None and not sim.instances["r1"].deleting


async def test_del_instance_deletes_unconnected_instances_only() -> None:
    options = SimulatorOptions(del_instance_s=0.3, delete_delay_s=0.0)
    async with (
        running_simulator(options) as sim,
        EvolutionClient(sim.base_url, sim.api_key) as client,
    ):
        await _create(client, "idle")
        await _create(client, "live")
        sim.set_state("live", "open")
        await asyncio.sleep(0.1)
        assert set(sim.instances) == {"idle", "live"}
        await asyncio.sleep(0.4)
        assert await client.fetch_instance("idle") is None
        assert await client.fetch_instance("live") is not None


async def test_changes_behind_the_back_over_http() -> None:
    async with (
        running_simulator() as sim,
        EvolutionClient(sim.base_url, sim.api_key) as client,
        aiohttp.ClientSession() as http,
    ):
        spec = WebhookSpec(url="http://127.0.0.1:9/a", events=("QRCODE_UPDATED",),
                           headers={"Authorization": "Bearer s3cret"})
        for name in ("b1", "b2"):
            await client.create_instance(name, integration="WHATSAPP-BAILEYS", webhook=spec)

        async def control(body: dict[str, Any]) -> int:
            async with http.post(sim.base_url + "/_sim/control", json=body) as resp:
                return resp.status

        assert await control({"delete_instances": ["b1"]}) == 200
        assert await control({"delete_instances": ["nope"]}) == 400
        assert await control({"set_webhooks": {"b2": {"url": "http://127.0.0.1:9/changed"}}}) == 200
        with pytest.raises(NotFoundError):
            await client.delete_instance("b1")  # gone at once, no delay
        assert (await client.find_webhook("b2")) is not None
        assert sim.webhooks["b2"].url == "http://127.0.0.1:9/changed"
        assert sim.webhooks["b2"].events == ["QRCODE_UPDATED"]  # untouched fields kept
        async with http.get(sim.base_url + "/_sim/instances") as resp:
            listing = (await resp.json())["instances"]
        assert [(i["name"], i["webhook"]["url"]) for i in listing] == [
            ("b2", "http://127.0.0.1:9/changed")
        ]
        assert "s3cret" not in str(listing)
        assert await control({"set_webhooks": {"b2": None}}) == 200
        assert "b2" not in sim.webhooks


async def test_several_servers_have_their_own_state_and_key_and_go_down_alone() -> None:
    async with running_simulators(3, SimulatorOptions(api_key="k", seed=1)) as sims:
        assert len({s.base_url for s in sims}) == 3
        assert [s.api_key for s in sims] == ["k-1", "k-2", "k-3"]
        async with EvolutionClient(sims[0].base_url, sims[0].api_key) as first:
            await _create(first, "only-on-1")
        assert "only-on-1" in sims[0].instances and not sims[1].instances
        async with aiohttp.ClientSession() as http:
            async with http.get(sims[1].base_url + "/instance/fetchInstances",
                                headers={"apikey": "k-1"}) as resp:
                assert resp.status == 401  # server 2 does not take server 1's key
            await sims[1].down()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(sims[1].base_url + "/"):
                    pass
            async with http.get(sims[2].base_url + "/") as resp:
                assert resp.status == 200
            await sims[1].up()
            async with http.get(sims[1].base_url + "/") as resp:
                assert resp.status == 200


def test_thread_harness_runs_coroutines_like_down_and_up() -> None:
    with SimulatorThread() as background:
        background.run(background.simulator.down())
        assert not background.simulator.listening
        background.run(background.simulator.up())
        assert background.simulator.listening


def test_several_servers_on_threads_for_sync_code() -> None:
    with simulator_threads(2, SimulatorOptions(api_key="t")) as servers:
        assert [s.api_key for s in servers] == ["t-1", "t-2"]
        assert servers[0].base_url != servers[1].base_url
        servers[1].run(servers[1].simulator.down())
        assert servers[0].simulator.listening and not servers[1].simulator.listening
    assert not any(s.simulator.listening for s in servers)  # all stopped on exit


def test_retry_schedule_and_loopback_rule() -> None:
    delays = list(retry_delays(5.0, 10, random.Random(1)))
    assert len(delays) == 9
    assert 4.0 <= delays[0] <= 6.0 and delays[-1] <= 360.0
    assert 900 < sum(delays) < 1600  # about 20 minutes, as recorded for u20
    assert is_loopback_url("http://127.0.0.1:18999/x") and is_loopback_url("http://localhost/")
    assert not is_loopback_url("https://ref.supabase.co/functions/v1/hook")
    assert not is_loopback_url("ftp://127.0.0.1/")


def test_cli_runs_several_servers() -> None:
    code = (
        "import sys; from listener.dev.simulator import main; "
        "sys.exit(main(['--port', '0', '--servers', '2', '--api-key', 'cli']))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline().decode() for _ in range(2)]
            urls = [re.search(r"http://127\.0\.0\.1:\d+", line) for line in lines]
            assert all(urls) and "server 2 of 2" in lines[1], lines

            async def statuses() -> list[int]:
                out = []
                async with aiohttp.ClientSession() as http:
                    for n, url in enumerate(urls, start=1):
                        assert url is not None
                        async with http.get(url.group(0) + "/instance/fetchInstances",
                                            headers={"apikey": f"cli-{n}"}) as resp:
                            out.append(resp.status)
                return out

            assert asyncio.run(statuses()) == [200, 200]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_down_over_http_resets_api_calls_and_keeps_control_reachable() -> None:
    async with running_simulator() as sim, aiohttp.ClientSession() as http:
        async with http.post(sim.base_url + "/_sim/control", json={"down": True}) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientError):
            async with http.get(sim.base_url + "/"):
                pass
        async with http.post(sim.base_url + "/_sim/control", json={"down": False}) as resp:
            assert resp.status == 200
        async with http.get(sim.base_url + "/") as resp:
            assert resp.status == 200
