"""The simulator's switches: behaviour and fault injection, settable at start and at runtime.

`SimulatorOptions` is a plain mutable dataclass: tests flip a field on `sim.options`, the
control endpoint (`POST /_sim/control`) sets the same fields from JSON, and the CLI sets
them from flags. Rates are probabilities per API request, drawn from one seeded generator
so a run with the same `seed` and the same request order injects the same faults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = [
    "FaultKind",
    "OutageMode",
    "ScriptedFault",
    "SimulatorOptions",
    "options_from_json",
]

OutageMode = Literal["503", "reset", "refuse"]
FaultKind = Literal["status", "raw", "html", "huge", "reset", "hang", "lose_response", "delay"]
_FAULT_KINDS = frozenset(get_args(FaultKind))
_OUTAGE_MODES = frozenset(get_args(OutageMode))


@dataclass
class ScriptedFault:
    """A deterministic fault for the next `times` requests matching `operation`/`instance`.

    Kinds:
    - `status`: answer `status` with the error envelope; `message` (any JSON) replaces the
      default message; `retry_after` sets the Retry-After header (e.g. for 429).
    - `raw`: answer `status` with `body` and `content_type` as given.
    - `html`: answer `status` (default 502) with a proxy-style HTML page.
    - `huge`: answer `status` (default 200) with `size_bytes` of JSON-looking filler,
      streamed; `chunked` False sends a Content-Length header first.
    - `reset`: close the connection without an answer (TCP RST).
    - `hang`: never answer (until the client gives up or the simulator stops).
    - `lose_response`: process the request normally, then reset instead of answering.
    - `delay`: wait `delay_s`, then process normally.

    `operation` is a simulator operation name (`create_instance`, `set_webhook`,
    `find_webhook`, `fetch_instances`, `connection_state`, `connect`, `logout`,
    `delete_instance`, `restart`, `root`, `verify_creds`) or None for any; `instance` an
    instance name or None for any; `times` None means forever.
    """

    kind: FaultKind = "status"
    operation: str | None = None
    instance: str | None = None
    times: int | None = 1
    status: int | None = None
    message: Any = None
    body: str | None = None
    content_type: str | None = None
    retry_after: str | None = None
    size_bytes: int = 5_000_000
    chunked: bool = True
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 (or None for forever)")

    def matches(self, operation: str, instance: str | None) -> bool:
        if self.operation is not None and self.operation != operation:
            return False
        return self.instance is None or self.instance == instance

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ScriptedFault:
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class SimulatorOptions:
    """Every behaviour switch of the simulator. Defaults: a healthy, instant v2.3.6."""

    api_key: str = "sim-key"
    # Latency added to every API request: latency_ms ± latency_jitter_ms (uniform).
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # Per-request fault probabilities (one draw per request; they partition [0, 1)).
    error_rate: float = 0.0  # answer 500 (string message)
    rate_limit_rate: float = 0.0  # answer 429 with Retry-After: retry_after_s
    retry_after_s: float | None = 1.0
    hang_rate: float = 0.0  # never answer (bounded by hang_max_s)
    hang_max_s: float = 300.0
    reset_rate: float = 0.0  # close the connection without an answer
    lose_response_rate: float = 0.0  # do the work, then reset instead of answering
    webhook_set_error_rate: float = 0.0  # POST /webhook/set answers 500
    # The server's key was rotated: every call that needs a key answers 401 (guards first).
    wrong_key: bool = False
    # Outage: every API request (GET / too) fails; `outage_s` ends it by itself.
    outage: bool = False
    outage_mode: OutageMode = "503"
    outage_s: float | None = None
    # Behaviour of the real server that takes time; 0 answers at once.
    # After DELETE the name stays "in use" and listed this long (recorded: still there a few
    # ms later, gone 1.5 s later); longer while a REMOVE_INSTANCE delivery is retried.
    delete_delay_s: float = 1.0
    # Deliver REMOVE_INSTANCE on delete to a subscribing webhook on a loopback address, with
    # the real retry schedule (5 s doubling to 300 s, 10 attempts): a retryable failure holds
    # the delete (~20 min) as recorded for u20. Other hosts are never contacted.
    deliver_remove_instance: bool = True
    webhook_retry_initial_s: float = 5.0
    webhook_max_attempts: int = 10
    # Like DEL_INSTANCE: delete an instance not `open` this many seconds after its creation.
    del_instance_s: float | None = None
    connect_delay_s: float = 0.0  # GET /instance/connect waits (real: 2 s, 5 s with number)
    qrcode_delay_s: float = 0.0  # create with qrcode:true waits (real: 5 s)
    seed: int | None = None
    client_name: str = "evolution_test"
    version: str = "2.3.6"
    server_url: str | None = None  # for GET / `manager`; default: the address it serves on
    # Request log (memory-bounded ring) and per-request logging (off: it costs throughput).
    record_requests: bool = True
    record_limit: int = 50_000
    log_requests: bool = False
    script: list[ScriptedFault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an impossible value (rates outside [0, 1], negative times)."""
        for name in (
            "error_rate",
            "rate_limit_rate",
            "hang_rate",
            "reset_rate",
            "lose_response_rate",
            "webhook_set_error_rate",
        ):
            rate = getattr(self, name)
            if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in (
            "latency_ms",
            "latency_jitter_ms",
            "hang_max_s",
            "delete_delay_s",
            "webhook_retry_initial_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.del_instance_s is not None and self.del_instance_s <= 0:
            raise ValueError("del_instance_s must be > 0 (or null for off)")
        if self.webhook_max_attempts < 1:
            raise ValueError("webhook_max_attempts must be >= 1")
        if self.outage_mode not in _OUTAGE_MODES:
            raise ValueError(f"outage_mode must be one of {sorted(_OUTAGE_MODES)}")
        if self.record_limit < 0:
            raise ValueError("record_limit must be >= 0")
        if not self.api_key:
            raise ValueError("api_key must not be empty")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["api_key"] = "***"  # the state endpoint must not hand out the key
        return data


def options_from_json(options: SimulatorOptions, data: dict[str, Any]) -> list[str]:
    """Apply the option fields present in `data` to `options`; return the names changed.

    Values are type-checked against the current value's type; on any error nothing changes.
    """
    fields = {f.name: f for f in dataclasses.fields(SimulatorOptions)}
    candidate = dataclasses.replace(options)
    changed: list[str] = []
    for name, value in data.items():
        if name not in fields:
            continue
        if name == "script":
            if not isinstance(value, list):
                raise ValueError("script must be a list of faults")
            candidate.script = [ScriptedFault.from_json(item) for item in value]
        else:
            _check_type(name, getattr(options, name), value)
            if name in _FLOATS and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            setattr(candidate, name, value)
        changed.append(name)
    candidate.validate()
    for name in changed:
        setattr(options, name, getattr(candidate, name))
    return changed


_NULLABLE = {"retry_after_s", "outage_s", "seed", "server_url", "del_instance_s"}
_FLOATS = {f.name for f in dataclasses.fields(SimulatorOptions) if str(f.type).startswith("float")}


def _check_type(name: str, current: Any, value: Any) -> None:
    if value is None:
        if name in _NULLABLE:
            return
        raise ValueError(f"{name} must not be null")
    if isinstance(current, bool) or name in (
        "wrong_key",
        "outage",
        "record_requests",
        "deliver_remove_instance",
    ):
        ok = isinstance(value, bool)
    elif isinstance(current, float) or name in ("retry_after_s", "outage_s", "del_instance_s"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(current, int) or name == "seed":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{name}: wrong type {type(value).__name__}")
