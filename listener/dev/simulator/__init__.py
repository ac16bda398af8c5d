"""An Evolution API v2.3.6 simulator with fault switches, for tests, the demo and benchmarks.

Use it in-process (`async with running_simulator(SimulatorOptions(...)) as sim:`), several
servers at once (`async with running_simulators(3) as sims:`), in a background thread
(`with SimulatorThread(options) as t:`), or on its own (`main()`, the CLI's `simulator`
subcommand). Modules: `server` (HTTP and the fault pipeline), `answers` (how it answers
and misanswers), `behaviour` (what the real server answers), `routing`, `control` (the
test-facing control API), `deliveries` (REMOVE_INSTANCE), `state`, `options`, `schema`,
`harness`, `cli`.
"""

from listener.dev.simulator.behaviour import Reply, envelope
from listener.dev.simulator.cli import build_parser, main, options_from_args
from listener.dev.simulator.harness import (
    SimulatorThread,
    running_simulator,
    running_simulators,
    server_options,
    simulator_threads,
)
from listener.dev.simulator.options import ScriptedFault, SimulatorOptions
from listener.dev.simulator.routing import route
from listener.dev.simulator.schema import INSTANCE_SCHEMA, WEBHOOK_EVENTS, WEBHOOK_SCHEMA
from listener.dev.simulator.server import Simulator
from listener.dev.simulator.state import RequestRecord, SimInstance, SimWebhook

__all__ = [
    "INSTANCE_SCHEMA",
    "WEBHOOK_EVENTS",
    "WEBHOOK_SCHEMA",
    "Reply",
    "RequestRecord",
    "ScriptedFault",
    "SimInstance",
    "SimWebhook",
    "Simulator",
    "SimulatorOptions",
    "SimulatorThread",
    "build_parser",
    "envelope",
    "main",
    "options_from_args",
    "route",
    "running_simulator",
    "running_simulators",
    "server_options",
    "simulator_threads",
]
