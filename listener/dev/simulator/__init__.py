"""An Evolution API v2.3.6 simulator with fault switches, for tests, the demo and benchmarks.

Use it in-process (`async with running_simulator(SimulatorOptions(...)) as sim:`), in a
background thread (`with SimulatorThread(options) as t:`), or on its own (`main()`, the
CLI's `simulator` subcommand). See `app.py` for the fault pipeline and control endpoints.
"""

from listener.dev.simulator.app import (
    Simulator,
    SimulatorThread,
    build_parser,
    main,
    options_from_args,
    route,
    running_simulator,
    serve,
)
from listener.dev.simulator.behaviour import Reply, envelope
from listener.dev.simulator.options import ScriptedFault, SimulatorOptions
from listener.dev.simulator.schema import INSTANCE_SCHEMA, WEBHOOK_EVENTS, WEBHOOK_SCHEMA
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
    "serve",
]
