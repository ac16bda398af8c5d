"""No secret is ever printed (SPEC §5): not the Evolution API key, not WEBHOOK_AUTHORIZATION,
not the database password, not an instance's token, in any log line, error, command output
or metrics body, through a full cycle that includes the error paths.

The service runs as a password-protected login role of this test's own (the server may use
trust authentication: the password is still in the DSN, and must still never be shown).
"""

from __future__ import annotations

import json
import uuid

from listener.config import WEBHOOK_EVENTS
from listener.dev.embedded_pg import free_port
from tests.e2e.cli_helpers import (
    Transcript,
    add_fault,
    env_for,
    http,
    insert_profiles,
    instance_name,
    instance_tokens,
    login_role,
    parse_metrics,
    run_cli,
    run_cli_parallel,
    set_option,
    sim_call,
    simulator_thread,
    status_of,
    wait_for,
)
from tests.harness import ServiceProcess, instance_rows, queue_rows
from tests.pg import TestDatabase, with_database


def test_a_full_cycle_prints_no_secret(db: TestDatabase) -> None:
    tag = uuid.uuid4().hex[:12]
    api_key = f"evo-key-{tag}-K3y"
    jwt = f"eyJhbGciOi.{tag}.wh00k-sig"
    webhook_authorization = f"Bearer {jwt}"
    transcript = Transcript()

    with login_role(db.server.admin_dsn) as (role, password), \
            simulator_thread(api_key=api_key) as sim:
        assert password.startswith("pw-")
        dsn = with_database(db.server.admin_dsn, db.name, role, password)
        env = env_for(dsn, sim, WEBHOOK_AUTHORIZATION=webhook_authorization,
                      LISTENER_LOG_LEVEL="DEBUG", LISTENER_SWEEP_INTERVAL_S=3600)
        ok = [uuid.uuid4() for _ in range(3)]
        during_outage = [uuid.uuid4() for _ in range(2)]
        rejected, flaky, later, fresh = (uuid.uuid4() for _ in range(4))
        add_fault(sim, operation="create_instance", instance=instance_name(rejected),
                  status=400, message=[f"bad request echoing apikey {api_key}"], times=None)
        add_fault(sim, operation="create_instance", instance=instance_name(flaky), status=500,
                  times=1)

        service = ServiceProcess(env)
        try:
            service.wait_ready()
            insert_profiles(db.dsn, [*ok, rejected, flaky])
            wait_for(lambda: all(status_of(db.dsn, u) == "completed" for u in [*ok, flaky]),
                     10, what="signups provisioned")
            wait_for(lambda: status_of(db.dsn, rejected) == "failed", 5, what="400 failed")

            # The key is rotated at the server for a while: global back-off, then recovery.
            set_option(sim, "wrong_key", True)
            insert_profiles(db.dsn, during_outage)
            wait_for(lambda: service.readyz()[0] == 503, 5, what="back-off reported")
            transcript.add("/readyz during the back-off", service.readyz()[1].decode())
            transcript.add("/metrics during the back-off", service.metrics())
            set_option(sim, "wrong_key", False)
            wait_for(lambda: all(status_of(db.dsn, u) == "completed" for u in during_outage),
                     15, what="provisioned after the key came back")

            metrics_body = service.metrics()
            parse_metrics(metrics_body)
            transcript.add("/metrics", metrics_body)
            transcript.add("/readyz", service.readyz()[1].decode())
            transcript.add("/healthz", http("GET", f"{service.metrics_url}/healthz")[1].decode())
        finally:
            code = service.stop()
        transcript.add("service output", service.output)
        assert code == 0, service.output[-3000:]

        # The secrets were really in play: the deliveries carry the authorization.
        name = instance_name(ok[0])
        headers = sim_call(sim, lambda s: s.webhooks[name].headers)
        assert headers == {"Authorization": webhook_authorization}
        assert sorted(sim_call(sim, lambda s: s.webhooks[name].events)) == sorted(WEBHOOK_EVENTS)
        tokens = instance_tokens(sim)
        assert len(tokens) == len(ok) + len(during_outage) + 1
        assert instance_rows(db.dsn)[ok[0]]["instance_token"] in tokens
        assert queue_rows(db.dsn)[rejected]["retry_count"] == 0

        # Every command an operator runs, successes and failures, with the same secrets.
        insert_profiles(db.dsn, [later])
        unreachable = {"DATABASE_URL": f"postgresql://{role}:{password}@127.0.0.1:"
                                       f"{free_port()}/{db.name}"}
        wrong = env | {"EVOLUTION_API_KEY": f"{api_key}-old"}
        calls = {
            "stats": (("stats",), env),
            "stats json": (("stats", "--json"), env),
            "doctor": (("doctor",), env),
            "doctor wrong key": (("doctor",), wrong),
            "drain": (("drain",), env),
            "provision force": (("provision", str(ok[0]), "--force"),
                                env | {"LISTENER_LOG_FORMAT": "text"}),
            "provision wrong key": (("provision", str(fresh)),
                                    wrong | {"LISTENER_LOG_FORMAT": "text"}),
            "stats unreachable": (("stats",), unreachable),
            "migrate": (("migrate",), env),
            "run bad config": (("run",), env | {"LISTENER_CONCURRENCY": "many"}),
        }
        results = dict(zip(calls, run_cli_parallel(list(calls.values())), strict=True))
        results["provision failing"] = run_cli("provision", str(rejected), env=env)
        results["retry all failed"] = run_cli("retry", "--all-failed", env=env)
        for result in results.values():
            transcript.add_result(result)
        tokens = instance_tokens(sim)

    codes = {label: result.code for label, result in results.items()}
    assert codes == {
        "stats": 0, "stats json": 0, "doctor": 0, "doctor wrong key": 1, "drain": 0,
        "provision force": 0, "provision wrong key": 1, "stats unreachable": 1,
        "migrate": 1, "run bad config": 78, "provision failing": 1,
        "retry all failed": 0,
    }, "\n".join(str(r) for r in results.values())
    failures = json.loads(results["stats json"].stdout)["recent_failures"]
    assert [f["user_id"] for f in failures] == [str(rejected)]
    assert "401" in results["doctor wrong key"].stdout
    assert "refused" in results["stats unreachable"].stderr
    assert status_of(db.dsn, later) == "completed"

    secrets = {"EVOLUTION_API_KEY": api_key, "WEBHOOK_AUTHORIZATION": webhook_authorization,
               "the JWT": jwt, "the database password": password,
               **{f"instance token {t[:4]}": t for t in tokens}}
    leaks = transcript.leaks(secrets.values())
    assert not leaks, "secrets printed:\n" + "\n".join(leaks)
    # The DSN is shown, without its password (positive control for the redaction).
    service_log = dict(transcript.texts)["service output"]
    assert f"{role}:***@" in service_log or f"{role}@" in service_log
    assert sum(len(text) for _, text in transcript.texts) > 5000
