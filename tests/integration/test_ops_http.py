"""The ops HTTP server, for real: bound on 127.0.0.1, queried with a real aiohttp client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from listener.ops.http import OpsServer
from listener.ops.metrics import Metrics


class Readiness:
    """A readiness callback the test can flip, as the worker's state would."""

    def __init__(self) -> None:
        self.state: tuple[bool, str] = (True, "")
        self.raises = False
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        if self.raises:
            raise RuntimeError("state unavailable")
        return self.state


@pytest.fixture
async def served() -> AsyncIterator[tuple[OpsServer, Metrics, Readiness, str]]:
    metrics = Metrics()
    readiness = Readiness()
    server = OpsServer("127.0.0.1", 0, metrics, readiness)
    await server.start()
    try:
        yield server, metrics, readiness, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_healthz_answers_while_the_loop_runs(
    served: tuple[OpsServer, Metrics, Readiness, str], client: aiohttp.ClientSession
) -> None:
    server, _, readiness, base = served
    assert server.port > 0
    readiness.state = (False, "database unreachable")  # liveness ignores readiness
    async with client.get(f"{base}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"alive": True}


async def test_readyz_follows_the_readiness_callback(
    served: tuple[OpsServer, Metrics, Readiness, str], client: aiohttp.ClientSession
) -> None:
    _, _, readiness, base = served
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"ready": True}

    readiness.state = (False, "global back-off: Evolution API unreachable")
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        assert await response.json() == {
            "ready": False,
            "reason": "global back-off: Evolution API unreachable",
        }

    readiness.state = (True, "")
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 200
    assert readiness.calls == 3  # evaluated per request, never cached


async def test_readyz_is_503_when_the_callback_raises(
    served: tuple[OpsServer, Metrics, Readiness, str], client: aiohttp.ClientSession
) -> None:
    _, _, readiness, base = served
    readiness.raises = True
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        body = await response.json()
    assert body["ready"] is False
    assert "RuntimeError" in body["reason"]


async def test_readyz_gives_a_reason_even_when_the_callback_gives_none(
    served: tuple[OpsServer, Metrics, Readiness, str], client: aiohttp.ClientSession
) -> None:
    _, _, readiness, base = served
    readiness.state = (False, "")
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        assert (await response.json())["reason"]


async def test_metrics_are_prometheus_text_and_live(
    served: tuple[OpsServer, Metrics, Readiness, str], client: aiohttp.ClientSession
) -> None:
    _, metrics, _, base = served
    metrics.provisioned.labels(outcome="completed").inc(3)
    metrics.refresh_queue_gauges({"pending": 4}, 1.5)
    async with client.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("evolution_listener_provisioned_total", (("outcome", "completed"),))] == 3
    assert samples[("evolution_listener_queue_depth", (("state", "pending"),))] == 4
    assert samples[("evolution_listener_oldest_pending_age_seconds", ())] == 1.5


async def test_metrics_negotiate_openmetrics(
    served: tuple[OpsServer, Metrics, Readiness, str], client: aiohttp.ClientSession
) -> None:
    _, _, _, base = served
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with client.get(f"{base}/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).rstrip().endswith("# EOF")


async def test_unknown_path_is_404(
    served: tuple[OpsServer, Metrics, Readiness, str], client: aiohttp.ClientSession
) -> None:
    _, _, _, base = served
    async with client.get(f"{base}/nope") as response:
        assert response.status == 404


async def test_busy_port_names_the_setting(
    served: tuple[OpsServer, Metrics, Readiness, str],
) -> None:
    server, metrics, readiness, _ = served
    second = OpsServer("127.0.0.1", server.port, metrics, readiness)
    with pytest.raises(OSError, match="LISTENER_METRICS_ADDR"):
        await second.start()
    await second.stop()


async def test_stop_closes_the_port_and_is_idempotent(client: aiohttp.ClientSession) -> None:
    server = OpsServer("127.0.0.1", 0, Metrics(), lambda: (True, ""))
    with pytest.raises(RuntimeError):
        _ = server.port
    await server.stop()  # before start: harmless
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    async with client.get(f"{base}/healthz") as response:
        assert response.status == 200
    await server.stop()
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(f"{base}/healthz"):
            pass
