"""The simulator's control API: what a test (or an operator of the demo) changes at runtime.

No key: bind to loopback only. The same document can be applied from Python with
`Simulator.control`.
- `GET /_sim/state`: options (key masked), counts, pending deletes
- `GET /_sim/instances`: every instance, its state, pending delete and webhook (secret
  header values masked, no tokens), for a test's assertions
- `GET /_sim/requests?since=SEQ&limit=N`: the request log
- `POST /_sim/control`: any `SimulatorOptions` field, plus actions `outage` (bool, with
  optional `outage_s`, `outage_mode`), `add_faults` ([fault...]), `fail_next`
  ({"operation", "statuses": [...], "instance"}), `clear_script` (true), `complete_deletes`
  (true or [names]), `restart` (true), `set_state` ({name: state}), `refuse_s` (seconds of
  refused connections), and behind the service's back: `delete_instances` ([names], gone at
  once; 400 if one does not exist), `set_webhooks` ({name: {url, events, headers, enabled}}
  changes only the fields given, or creates the row; null drops it), `down` (true: every API
  connection is reset until `down: false`)
- `POST /_sim/reset`: forget everything (`{"keep_options": true}` keeps the options)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from listener.dev.simulator.answers import JSON_TYPE
from listener.dev.simulator.behaviour import dumps
from listener.dev.simulator.options import ScriptedFault, SimulatorOptions, options_from_json

if TYPE_CHECKING:
    from listener.dev.simulator.server import Simulator

__all__ = [
    "apply_control",
    "control_route",
    "instance_listing",
    "simulator_state",
]

_OPTION_FIELDS = frozenset(f.name for f in dataclasses.fields(SimulatorOptions))
_ACTIONS = frozenset(
    {
        "outage",
        "add_faults",
        "fail_next",
        "clear_script",
        "complete_deletes",
        "restart",
        "set_state",
        "refuse_s",
        "delete_instances",
        "set_webhooks",
        "down",
    }
)
_SECRET_HEADERS = frozenset({"authorization", "apikey", "jwt_key"})


def simulator_state(sim: Simulator, *, limit: int = 1000) -> dict[str, Any]:
    """What GET /_sim/state answers (the key masked)."""
    names = list(itertools.islice(sim.store.instances, limit))
    return {
        "base_url": sim.base_url,
        "listening": sim.listening,
        "outage_active": sim.options.outage,
        "options": sim.options.to_json(),
        "instances": len(sim.store.instances),
        "instance_names": names,
        "pending_deletes": sorted(sim.store.pending_deletes),
        "webhooks": len(sim.store.webhooks),
        "requests_total": sim.log.total,
    }


def instance_listing(sim: Simulator) -> list[dict[str, Any]]:
    """What GET /_sim/instances answers: every instance, its state and webhook, for test
    assertions. Secret header values are masked; tokens are left out."""
    out: list[dict[str, Any]] = []
    for instance in sim.store.all():
        hook = sim.store.webhooks.get(instance.name)
        webhook: dict[str, Any] | None = None
        if hook is not None:
            headers = hook.headers if isinstance(hook.headers, dict) else {}
            webhook = {
                "url": hook.url,
                "enabled": hook.enabled,
                "events": hook.events,
                "headers": {
                    k: ("***" if str(k).lower() in _SECRET_HEADERS else v)
                    for k, v in headers.items()
                },
            }
        out.append(
            {
                "name": instance.name,
                "instance_id": instance.instance_id,
                "integration": instance.integration,
                "state": instance.state,
                "deleting": instance.deleting,
                "webhook": webhook,
            }
        )
    return out


async def apply_control(sim: Simulator, data: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a control document; on a bad option value nothing of the options changes."""
    unknown = set(data) - _OPTION_FIELDS - _ACTIONS - {"outage_s", "outage_mode"}
    if unknown:
        raise ValueError(f"unknown control keys: {', '.join(sorted(unknown))}")
    plain = {k: v for k, v in data.items() if k in _OPTION_FIELDS and k not in ("outage", "script")}
    if "script" in data:
        plain["script"] = data["script"]
    changed = options_from_json(sim.options, plain)
    if "seed" in changed:
        sim.reseed()
    if "outage" in data:
        if data["outage"] is True:
            sim.start_outage(sim.options.outage_s, sim.options.outage_mode)
        elif data["outage"] is False:
            sim.end_outage()
        else:
            raise ValueError("outage must be true or false")
    for item in data.get("add_faults") or []:
        sim.add_fault(ScriptedFault.from_json(item))
    if "fail_next" in data:
        spec = data["fail_next"]
        if not isinstance(spec, dict) or not isinstance(spec.get("statuses"), list):
            raise ValueError('fail_next must be {"operation", "statuses": [...], "instance"}')
        sim.fail_next(spec.get("operation"), *spec["statuses"], instance=spec.get("instance"))
    if data.get("clear_script") is True:
        sim.clear_faults()
    deletes = data.get("complete_deletes")
    if deletes is True:
        sim.complete_deletes()
    elif isinstance(deletes, list):
        sim.complete_deletes(*[str(n) for n in deletes])
    if data.get("restart") is True:
        sim.restart()
    for name, state in (data.get("set_state") or {}).items():
        sim.set_state(name, state)
    for name in data.get("delete_instances") or []:
        if not sim.delete_behind_the_back(str(name)):
            raise KeyError(name)
    for name, spec in (data.get("set_webhooks") or {}).items():
        if spec is None:
            sim.drop_webhook(str(name))
        elif isinstance(spec, dict):
            sim.change_webhook(str(name), **spec)
        else:
            raise ValueError("set_webhooks values must be objects (or null to drop)")
    if "refuse_s" in data:
        sim.start_outage(float(data["refuse_s"]), "refuse")
    if "down" in data:  # over HTTP: reset every API connection, control stays reachable
        if data["down"] is True:
            sim.start_outage(None, "reset")
        elif data["down"] is False:
            sim.end_outage()
        else:
            raise ValueError("down must be true or false")
    return simulator_state(sim)


async def control_route(sim: Simulator, request: web.Request, raw_path: str) -> web.Response:
    """Answer one `/_sim/...` request."""
    path = raw_path.rstrip("/")
    try:
        if path == "/_sim/state" and request.method == "GET":
            limit = int(request.query.get("limit", "1000"))
            return _control_json(200, simulator_state(sim, limit=limit))
        if path == "/_sim/instances" and request.method == "GET":
            return _control_json(200, {"instances": instance_listing(sim)})
        if path == "/_sim/requests" and request.method == "GET":
            since = int(request.query.get("since", "0"))
            limit = int(request.query.get("limit", "1000"))
            records = sim.log.since(since, limit)
            return _control_json(
                200, {"total": sim.log.total, "requests": [r.to_json() for r in records]}
            )
        if path == "/_sim/control" and request.method == "POST":
            data = await request.json() if await request.read() else {}
            if not isinstance(data, dict):
                raise ValueError("the control body must be a JSON object")
            return _control_json(200, await apply_control(sim, data))
        if path == "/_sim/reset" and request.method == "POST":
            data = await request.json() if await request.read() else {}
            keep = isinstance(data, dict) and data.get("keep_options") is True
            sim.reset(keep_options=keep)
            return _control_json(200, simulator_state(sim))
    except (ValueError, TypeError, KeyError) as error:
        return _control_json(400, {"error": f"{type(error).__name__}: {error}"})
    return _control_json(404, {"error": f"no control route {request.method} {path}"})


def _control_json(status: int, payload: Any) -> web.Response:
    return web.Response(body=dumps(payload), status=status, headers={"Content-Type": JSON_TYPE})
