"""Ways to run simulators: in-process (one or several servers), or on a background thread.

Why apart from the server: tests, the demo and the benchmarks each hold simulators
differently (an async context, a thread for sync code, several servers for placement
tests); the server itself does not care.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from listener.dev.simulator.options import SimulatorOptions
from listener.dev.simulator.server import Simulator

__all__ = [
    "SimulatorThread",
    "running_simulator",
    "running_simulators",
    "server_options",
    "simulator_threads",
]

_T = TypeVar("_T")


@contextlib.asynccontextmanager
async def running_simulator(
    options: SimulatorOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """`async with running_simulator(opts) as sim:` a started simulator, stopped on exit."""
    simulator = Simulator(options)
    await simulator.start(host, port)
    try:
        yield simulator
    finally:
        await simulator.stop()


def server_options(options: SimulatorOptions | None, index: int, count: int) -> SimulatorOptions:
    """Options of server `index` (0-based) of `count`: its own copy, and with several
    servers its own key `<api_key>-<n>` (n from 1) and seed, so no two servers share state,
    a key, or a fault pattern."""
    base = copy.deepcopy(options) if options is not None else SimulatorOptions()
    if count > 1:
        base.api_key = f"{base.api_key}-{index + 1}"
        if base.seed is not None:
            base.seed += index
    return base


@contextlib.asynccontextmanager
async def running_simulators(
    count: int, options: SimulatorOptions | None = None, *, host: str = "127.0.0.1"
) -> AsyncIterator[list[Simulator]]:
    """`async with running_simulators(3) as sims:` several independent Evolution API servers
    (each its own port, state and key: `sims[i].base_url`, `sims[i].api_key`); stop one with
    `await sims[i].down()` and bring it back with `await sims[i].up()`."""
    if count < 1:
        raise ValueError("count must be >= 1")
    simulators: list[Simulator] = []
    try:
        for index in range(count):
            simulator = Simulator(server_options(options, index, count))
            await simulator.start(host, 0)
            simulators.append(simulator)
        yield simulators
    finally:
        await asyncio.gather(*(s.stop() for s in simulators), return_exceptions=True)


class SimulatorThread:
    """A simulator on its own event loop in a background thread (for sync code, benchmarks).

    Mutate state from other threads through `call`, which runs a function on its loop.
    """

    def __init__(
        self, options: SimulatorOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(options)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return self.simulator.base_url

    @property
    def api_key(self) -> str:
        return self.simulator.api_key

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="evolution-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None:
            raise RuntimeError("the simulator did not start") from self._error
        return self.simulator

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.simulator.start(self._host, self._port)
        except BaseException as error:  # reported to start()
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.simulator.stop()

    def call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run `function(*args)` on the simulator's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("not started")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as error:
                future.set_exception(error)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine (e.g. `simulator.down()`) on the simulator's loop; its result."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def simulator_threads(
    count: int, options: SimulatorOptions | None = None, *, host: str = "127.0.0.1"
) -> Iterator[list[SimulatorThread]]:
    """`with simulator_threads(3) as servers:` several servers for sync code (each on its own
    thread and loop, own port, state and key as in `running_simulators`); take one down
    with `servers[i].run(servers[i].simulator.down())`."""
    if count < 1:
        raise ValueError("count must be >= 1")
    threads: list[SimulatorThread] = []
    try:
        for index in range(count):
            thread = SimulatorThread(server_options(options, index, count), host=host)
            threads.append(thread)
            thread.start()
        yield threads
    finally:
        for thread in threads:
            thread.stop()

