"""Configuration: defaults, one-line errors naming the variable, no secret in any output."""

from __future__ import annotations

import pytest

from listener.config import (
    ConfigError,
    DatabaseSettings,
    Settings,
    load_settings,
    redact_dsn,
    transaction_pooler_reason,
)

pytestmark = pytest.mark.unit

BASE = {
    "DATABASE_URL": "postgresql://svc:s3cret-pw@db.example.com:5432/postgres",
    "EVOLUTION_API_BASE_URL": "https://evo.example.com/",
    "EVOLUTION_API_KEY": "global-key-123",
    "SUPABASE_URL": "https://ref.supabase.co",
}


def _load(**changes: str | None) -> Settings:
    env = {**BASE}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return load_settings(Settings, env)


def test_defaults_are_the_specs() -> None:
    s = _load()
    assert (s.concurrency, s.sweep_interval_s, s.max_retries, s.retry_base_ms) == (8, 300, 3, 800)
    assert (s.http_timeout_s, s.lease_s, s.max_reclaims, s.shutdown_grace_s) == (10, 60, 10, 20)
    assert s.metrics_addr == "127.0.0.1:9464" and s.instance_prefix == "evo-"
    assert s.integration == "WHATSAPP-BAILEYS"
    assert (s.log_format, s.log_level) == ("auto", "INFO")
    assert s.webhook_url == "https://ref.supabase.co/functions/v1/evolution-webhook-handler"
    assert s.evolution_api_base_url == "https://evo.example.com"


def test_webhook_url_overrides_supabase_url() -> None:
    assert _load(WEBHOOK_URL="https://hooks.example.com/x").webhook_url == (
        "https://hooks.example.com/x"
    )
    assert _load(SUPABASE_URL=None, WEBHOOK_URL="https://h.example.com/y").webhook_url == (
        "https://h.example.com/y"
    )


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"DATABASE_URL": None}, "DATABASE_URL: is required"),
        ({"EVOLUTION_API_KEY": ""}, "EVOLUTION_API_KEY"),
        ({"EVOLUTION_API_BASE_URL": "evo.example.com"}, "EVOLUTION_API_BASE_URL"),
        ({"LISTENER_CONCURRENCY": "abc"}, "LISTENER_CONCURRENCY"),
        ({"LISTENER_CONCURRENCY": "0"}, "LISTENER_CONCURRENCY"),
        ({"LISTENER_METRICS_ADDR": "9464"}, "LISTENER_METRICS_ADDR"),
        ({"LISTENER_INTEGRATION": "TELEGRAM"}, "LISTENER_INTEGRATION"),
        ({"LISTENER_LOG_FORMAT": "xml"}, "LISTENER_LOG_FORMAT"),
        ({"LISTENER_INSTANCE_PREFIX": "bad prefix!"}, "LISTENER_INSTANCE_PREFIX"),
        ({"LISTENER_CLEANUP_AT": "25:00"}, "LISTENER_CLEANUP_AT"),
        ({"SUPABASE_URL": None}, "SUPABASE_URL or WEBHOOK_URL"),
        ({"LISTENER_LEASE_S": "5"}, "LISTENER_LEASE_S"),
        ({"DATABASE_URL": "postgresql://u:pw@pooler.supabase.com:6543/postgres"}, "6543"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(
    changes: dict[str, str | None], names: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(**changes)
    message = str(raised.value)
    assert names in message
    assert "\n" not in message
    assert raised.value.exit_code == 78
    for secret in ("s3cret-pw", "global-key-123", "pw@"):
        assert secret not in message


def test_secrets_never_print() -> None:
    s = _load(WEBHOOK_AUTHORIZATION="Bearer jwt-abc")
    text = repr(s) + str(s)
    for secret in ("s3cret-pw", "global-key-123", "jwt-abc"):
        assert secret not in text
    assert set(s.secrets()) == {"s3cret-pw", "global-key-123", "Bearer jwt-abc"}
    assert s.dsn_for_display == "postgresql://svc:***@db.example.com:5432/postgres"


def test_database_settings_need_only_the_dsn() -> None:
    d = load_settings(DatabaseSettings, {"DATABASE_URL": "host=h port=5432 password=x user=u"})
    assert d.dsn_for_display == "host=h port=5432 password=*** user=u"


@pytest.mark.parametrize(
    ("dsn", "refused"),
    [
        ("postgresql://u@db.ref.supabase.co:5432/postgres", False),
        ("postgresql://u@aws-0-eu.pooler.supabase.com:6543/postgres", True),
        ("host=h port=6543 dbname=x", True),
        ("postgresql://u@h/db?pgbouncer=true", True),
        ("postgresql://u@h/db", False),
    ],
)
def test_transaction_pooler_detection(dsn: str, refused: bool) -> None:
    assert (transaction_pooler_reason(dsn) is not None) is refused


def test_redact_dsn_forms() -> None:
    assert redact_dsn("postgresql://a:b@h/d?password=zz") == "postgresql://a:***@h/d?password=***"
    assert redact_dsn("postgresql://a@h/d") == "postgresql://a@h/d"
