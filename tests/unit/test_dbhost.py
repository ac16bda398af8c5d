"""Connection kinds and the IPv6-only verdict, decided without the internet: the resolver and
the route probe are injected."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest

from listener.config import Settings, load_settings
from listener.dbhost import (
    Endpoint,
    Kind,
    Reachability,
    classify,
    endpoint_of,
    ipv6_only_unreachable,
)
from listener.doctor import connection_budget, pooler_user_warning, run_doctor

pytestmark = pytest.mark.unit

V4, V6 = socket.AF_INET, socket.AF_INET6


@pytest.mark.parametrize(("dsn", "kind"), [
    ("postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres", Kind.SUPABASE_DIRECT),
    ("postgresql://postgres.abcdefgh:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres",
     Kind.SUPABASE_SESSION_POOLER),
    ("postgresql://postgres.abcdefgh:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
     Kind.TRANSACTION_POOLER),
    ("host=/var/run/postgresql dbname=app", Kind.UNIX_SOCKET),
    ("postgresql://u@10.0.0.5/app", Kind.OTHER),
])
def test_classify(dsn: str, kind: Kind) -> None:
    endpoint = endpoint_of(dsn)
    assert endpoint is not None
    assert classify(endpoint) is kind


def test_endpoint_reads_host_port_user() -> None:
    assert endpoint_of("host=h1,h2 port=5433,5434 user=x") == Endpoint("h1", 5433, "x")
    assert endpoint_of("postgresql://u@h/db") == Endpoint("h", 5432, "u")


@pytest.mark.parametrize(("families", "route", "verdict"), [
    ({V6}, False, True),        # Supabase direct host from an IPv4-only VM
    ({V6}, True, False),        # the VM has IPv6
    ({V4, V6}, False, False),   # IPv4 add-on: an A record exists
    ({V4}, False, False),
    (set(), False, False),      # does not resolve: another message's business
])
def test_ipv6_only_unreachable(families: set[int], route: bool, verdict: bool) -> None:
    assert ipv6_only_unreachable(Reachability(frozenset(families), route)) is verdict


ENV = {"DATABASE_URL": "postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres",
       "EVOLUTION_API_BASE_URL": "http://127.0.0.1:9", "EVOLUTION_API_KEY": "k",
       "SUPABASE_URL": "https://abcdefgh.supabase.co"}


def test_doctor_says_use_the_session_pooler_for_an_ipv6_only_host_and_does_not_connect() -> None:
    probed: list[tuple[str, int]] = []

    def ipv4_only_machine(host: str, port: int) -> Reachability:
        probed.append((host, port))
        return Reachability(frozenset({V6}), ipv6_route=False)

    out = io.StringIO()
    code = asyncio.run(run_doctor(ENV, out, probe=ipv4_only_machine))
    lines = out.getvalue().splitlines()
    assert probed == [("db.abcdefgh.supabase.co", 5432)]
    [network] = [line for line in lines if "database network" in line]
    assert network.startswith("fail")
    assert "only IPv6" in network and "session pooler" in network
    assert "pooler.supabase.com:5432" in network
    assert not [line for line in lines if "database reachable" in line]
    assert "pw" not in out.getvalue().replace("pw@", "")  # no password anywhere
    assert code == 1


def test_doctor_prints_the_connection_budget() -> None:
    out = io.StringIO()
    env = {**ENV, "LISTENER_CONCURRENCY": "4"}
    asyncio.run(run_doctor(env, out, probe=lambda h, p: Reachability(frozenset({V6}), False)))
    [budget] = [line for line in out.getvalue().splitlines() if "connection budget" in line]
    assert "7 connections per replica (pool 6" in budget and "+ 1 LISTEN" in budget


def test_budget_warns_beyond_the_session_poolers_default_pool_size() -> None:
    base = {k: v for k, v in ENV.items()}
    big = load_settings(Settings, {**base, "LISTENER_CONCURRENCY": "32"})   # 18 + 1
    small = load_settings(Settings, {**base, "LISTENER_DB_POOL_SIZE": "6"})  # 6 + 1
    assert connection_budget(big, Kind.SUPABASE_SESSION_POOLER)[0] == "warn"
    assert connection_budget(small, Kind.SUPABASE_SESSION_POOLER)[0] == "ok"
    assert connection_budget(big, Kind.OTHER)[0] == "ok"
    assert "19 connections per replica" in connection_budget(big, Kind.OTHER)[1]



def test_session_pooler_user_must_carry_the_project_ref() -> None:
    host = "aws-0-eu-central-1.pooler.supabase.com"
    bare = Endpoint(host, 5432, "evolution_listener_svc")
    with_ref = Endpoint(host, 5432, "evolution_listener_svc.abcdefgh")
    warning = pooler_user_warning(bare, classify(bare))
    assert warning is not None and "<role>.<project-ref>" in warning
    assert pooler_user_warning(with_ref, classify(with_ref)) is None
    direct = Endpoint("db.abcdefgh.supabase.co", 5432, "postgres")
    assert pooler_user_warning(direct, classify(direct)) is None
