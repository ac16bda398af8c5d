"""Settings from the environment (or a systemd EnvironmentFile), validated once at start.

A missing or invalid value must stop the service with one line naming the variable and
exit code 78 (EX_CONFIG), so systemd does not restart a service that cannot work.
Secrets are `SecretStr` and DSNs are only ever shown through `redact_dsn`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from listener.fleet.servers import SERVERS_ENV, ServerSpec, default_server, load_servers_file

EX_CONFIG = 78

WEBHOOK_EVENTS: tuple[str, ...] = (
    "QRCODE_UPDATED",
    "CONNECTION_UPDATE",
    "MESSAGES_UPSERT",
    "MESSAGES_UPDATE",
    "SEND_MESSAGE",
)
WEBHOOK_HANDLER_PATH = "/functions/v1/evolution-webhook-handler"
TRANSACTION_POOLER_PORT = 6543
_INSTANCE_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{0,27}$")


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line an operator reads."""

    exit_code = EX_CONFIG


def redact_dsn(dsn: str) -> str:
    """Show a DSN without its password (URL or key=value form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def dsn_port(dsn: str) -> int | None:
    """The port a DSN names, if it names one (URL or key=value form)."""
    if "://" in dsn:
        try:
            return urlsplit(dsn).port
        except ValueError:
            return None
    match = re.search(r"(?i)\bport\s*=\s*'?(\d+)", dsn)
    return int(match.group(1)) if match else None


def transaction_pooler_reason(dsn: str) -> str | None:
    """Why this DSN cannot carry LISTEN, or None when it looks like a direct/session connection."""
    if dsn_port(dsn) == TRANSACTION_POOLER_PORT:
        return (
            "points at port 6543, a transaction-mode pooler (Supabase/PgBouncer): LISTEN does not "
            "work there; use the direct connection (db.<ref>.supabase.co:5432) or the session "
            "pooler on port 5432"
        )
    if re.search(r"(?i)[?&\s]pgbouncer=true", dsn):
        return (
            "carries pgbouncer=true, a transaction-mode pooler: LISTEN does not work there; "
            "use a direct or session-mode connection"
        )
    return None


def split_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); ValueError when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


def default_pool_size(concurrency: int) -> int:
    """In-flight attempts (at most 16 hold a connection at once) plus the claim loop and one
    spare for the completion batcher and the gauges."""
    return min(concurrency, 16) + 2


def _check_http_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host")
    return value.rstrip("/")


# The mapping `load_settings` was given (tests, the doctor), read instead of os.environ.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("listener_environ", default=None)


class _Environment(EnvSettingsSource):
    """pydantic-settings' own environment reading, from `load_settings`'s mapping if any."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        if env is None:
            return super()._load_env_vars()
        return parse_env_vars(env, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


class DatabaseSettings(BaseSettings):
    """What `migrate` and the read-only commands need: just the DSN."""

    # An empty variable counts as unset (a systemd EnvironmentFile line `FOO=` means "not
    # given"): the default applies, or a required one is reported as not set.
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True,
                                      env_ignore_empty=True, case_sensitive=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment only: no init arguments, .env or secrets directory."""
        return (_Environment(settings_cls),)

    database_url: SecretStr = Field(validation_alias="DATABASE_URL")

    @field_validator("database_url")
    @classmethod
    def _dsn_shape(cls, value: SecretStr) -> SecretStr:
        dsn = value.get_secret_value().strip()
        if not dsn:
            raise ValueError("must not be empty")
        if "://" in dsn and not dsn.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be a postgresql:// URL or a key=value connection string")
        return SecretStr(dsn)

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def dsn_for_display(self) -> str:
        return redact_dsn(self.dsn)

    def secrets(self) -> list[str]:
        """The secret values this config holds (the DSN's password), for log redaction."""
        password = _dsn_password(self.dsn)
        return [password] if password else []


class Settings(DatabaseSettings):
    """Everything `run` needs (SPEC §5)."""

    # With EVOLUTION_API_SERVERS set, the two single-server variables are not needed: they
    # then mirror the file's first server, for code that still knows only one server.
    evolution_api_base_url: str = Field(validation_alias="EVOLUTION_API_BASE_URL")
    evolution_api_key: SecretStr = Field(validation_alias="EVOLUTION_API_KEY")
    supabase_url: str | None = Field(default=None, validation_alias="SUPABASE_URL")
    webhook_url_override: str | None = Field(default=None, validation_alias="WEBHOOK_URL")
    webhook_authorization: SecretStr | None = Field(
        default=None, validation_alias="WEBHOOK_AUTHORIZATION"
    )

    concurrency: int = Field(default=8, ge=1, le=1024, validation_alias="LISTENER_CONCURRENCY")
    # None = default_pool_size(concurrency). Explicit so the connection budget against a
    # capped pooler (Supabase session pooler: the project's Pool Size) is the operator's.
    db_pool_size: int | None = Field(
        default=None, ge=2, le=1000, validation_alias="LISTENER_DB_POOL_SIZE"
    )
    sweep_interval_s: float = Field(
        default=300.0, gt=0, le=86400, validation_alias="LISTENER_SWEEP_INTERVAL_S"
    )
    max_retries: int = Field(default=3, ge=0, le=100, validation_alias="LISTENER_MAX_RETRIES")
    retry_base_ms: int = Field(
        default=800, ge=1, le=3_600_000, validation_alias="LISTENER_RETRY_BASE_MS"
    )
    http_timeout_s: float = Field(
        default=10.0, gt=0, le=600, validation_alias="LISTENER_HTTP_TIMEOUT_S"
    )
    lease_s: float = Field(default=60.0, gt=0, le=86400, validation_alias="LISTENER_LEASE_S")
    max_reclaims: int = Field(default=10, ge=0, le=1000, validation_alias="LISTENER_MAX_RECLAIMS")
    shutdown_grace_s: float = Field(
        default=20.0, ge=0, le=3600, validation_alias="LISTENER_SHUTDOWN_GRACE_S"
    )
    metrics_addr: str = Field(default="127.0.0.1:9464", validation_alias="LISTENER_METRICS_ADDR")
    instance_prefix: str = Field(default="evo-", validation_alias="LISTENER_INSTANCE_PREFIX")
    # WHATSAPP-BUSINESS needs a per-user Meta token and phone number at creation, which a
    # signup does not carry: every user would fail with a permanent 400, so it is refused.
    integration: Literal["WHATSAPP-BAILEYS", "EVOLUTION"] = Field(
        default="WHATSAPP-BAILEYS", validation_alias="LISTENER_INTEGRATION"
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", validation_alias="LISTENER_LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="LISTENER_LOG_LEVEL"
    )
    # SPEC §9: off leaves deleted users' instances in place (reconcile reports orphan_row).
    deprovision_setting: Literal["on", "off"] = Field(
        default="on", validation_alias="LISTENER_DEPROVISION"
    )
    reconcile_interval_s: float = Field(
        default=3600.0, ge=0, le=7 * 86400, validation_alias="LISTENER_RECONCILE_INTERVAL_S"
    )
    # "<N>" journald priority prefixes on log lines (auto: when stdout is the journal stream).
    log_syslog_prefix: Literal["auto", "on", "off"] = Field(
        default="auto", validation_alias="LISTENER_LOG_SYSLOG_PREFIX"
    )
    cleanup_schedule: str | None = Field(default=None, validation_alias="LISTENER_CLEANUP_AT")
    cleanup_older_than_days: int = Field(
        default=30, ge=1, le=36500, validation_alias="LISTENER_CLEANUP_OLDER_THAN_DAYS"
    )
    # The fleet (SPEC §10): the file EVOLUTION_API_SERVERS names, read here at start (its
    # keys come from the variables it names), or the single server `default`.
    servers_file: str | None = Field(default=None, validation_alias=SERVERS_ENV)
    _servers: tuple[ServerSpec, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _fleet(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        path = data.get(SERVERS_ENV) if isinstance(data, dict) else None
        servers: tuple[ServerSpec, ...] = ()
        if isinstance(path, str) and path.strip():
            # The keys live in variables the file names, not in fields: read the whole
            # environment `load_settings` was given (or the process's).
            environ = _ENVIRON.get()
            servers = load_servers_file(path.strip(), os.environ if environ is None else environ)
            data = {**data, SERVERS_ENV: path.strip(), "EVOLUTION_API_BASE_URL":
                    servers[0].base_url, "EVOLUTION_API_KEY": servers[0].api_key}
        settings = handler(data)
        settings._servers = servers or (
            default_server(settings.evolution_api_base_url, settings.evolution_api_key),)
        return settings

    @property
    def servers(self) -> tuple[ServerSpec, ...]:
        """Every Evolution server, in the file's order; never empty."""
        return self._servers

    @field_validator("db_pool_size", mode="before")
    @classmethod
    def _auto_pool(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", "log_syslog_prefix", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("deprovision_setting", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        """on/off as SPEC §5 writes it; true/false, yes/no and 1/0 mean the same."""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("on", "true", "yes", "1"):
                return "on"
            if lowered in ("off", "false", "no", "0"):
                return "off"
        return value

    @property
    def deprovision(self) -> bool:
        return self.deprovision_setting == "on"

    @field_validator("evolution_api_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _check_http_url(value.strip(), "the Evolution API base URL")

    @field_validator("supabase_url", "webhook_url_override")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return _check_http_url(value.strip(), "the URL")

    @field_validator("evolution_api_key")
    @classmethod
    def _key_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("metrics_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("instance_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _INSTANCE_PREFIX_RE.match(value):
            raise ValueError("must be at most 27 characters of letters, digits, '-' or '_'")
        return value

    @field_validator("cleanup_schedule")
    @classmethod
    def _cleanup_at(cls, value: str | None) -> str | None:
        if value is None or not value.strip() or value.strip().lower() == "off":
            return None
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
            raise ValueError("must be HH:MM (UTC), e.g. 02:00, or 'off'")
        return value.strip()

    @model_validator(mode="after")
    def _webhook_target(self) -> Settings:
        if self.supabase_url is None and self.webhook_url_override is None:
            raise ValueError("SUPABASE_URL or WEBHOOK_URL must be set (the webhook target)")
        reason = transaction_pooler_reason(self.dsn)
        if reason:
            raise ValueError(f"DATABASE_URL {reason}")
        if self.lease_s <= self.http_timeout_s * 2:
            raise ValueError(
                "LISTENER_LEASE_S must be longer than one attempt can take "
                "(more than twice LISTENER_HTTP_TIMEOUT_S)"
            )
        return self

    @property
    def pool_size(self) -> int:
        """Connections of the work pool (the LISTEN connection is one more)."""
        return self.db_pool_size or default_pool_size(self.concurrency)

    @property
    def connections_per_replica(self) -> int:
        """Every PostgreSQL connection one replica may hold: the pool plus LISTEN."""
        return self.pool_size + 1

    @property
    def webhook_url(self) -> str:
        if self.webhook_url_override:
            return self.webhook_url_override
        assert self.supabase_url is not None  # guaranteed by _webhook_target
        return f"{self.supabase_url}{WEBHOOK_HANDLER_PATH}"

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        return split_host_port(self.metrics_addr)

    def secrets(self) -> list[str]:
        """Every secret value this config holds, for redaction checks."""
        found = [self.evolution_api_key.get_secret_value()]
        found += [s.api_key.get_secret_value() for s in self.servers if s.api_key_env]
        if self.webhook_authorization is not None:
            found.append(self.webhook_authorization.get_secret_value())
        return found + super().secrets()


def _dsn_password(dsn: str) -> str | None:
    if "://" in dsn:
        return urlsplit(dsn).password
    match = re.search(r"(?i)password\s*=\s*('([^']*)'|(\S+))", dsn)
    if not match:
        return None
    return match.group(2) if match.group(2) is not None else match.group(3)


def _env_name(model: type[BaseSettings], loc: tuple[Any, ...]) -> str:
    if not loc:
        return "configuration"
    first = str(loc[0])
    field = model.model_fields.get(first)
    if field is not None and isinstance(field.validation_alias, str):
        return field.validation_alias
    return first


def describe_validation_error(model: type[BaseSettings], error: ValidationError) -> str:
    """One line: the first problem, naming the environment variable, never its value."""
    first = error.errors(include_url=False, include_input=False)[0]
    name = _env_name(model, tuple(first.get("loc", ())))
    kind = first.get("type", "")
    message = str(first.get("msg", "invalid"))
    if kind == "missing":
        message = "is required but not set"
    message = message.removeprefix("Value error, ")
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    if not first.get("loc"):
        return f"configuration error: {message}{extra}"
    return f"configuration error: {name}: {message}{extra}"


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(model: type[SettingsT], env: Mapping[str, str] | None = None) -> SettingsT:
    """Build settings from `env` (default: the process environment); raise ConfigError."""
    token = _ENVIRON.set(env)
    try:
        return model()
    except ValidationError as error:
        raise ConfigError(describe_validation_error(model, error)) from None
    finally:
        _ENVIRON.reset(token)


class EnvFileError(ConfigError):
    """An --env-file that cannot be read or parsed."""


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (the subset operators use).

    '#' or ';' starts a comment only at the beginning of a line; a value in matching single
    or double quotes is unquoted; `export KEY=...` is accepted. A line without '=' is an
    error naming its line number (never its content: it may be a secret).
    """
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise EnvFileError(f"line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in ('"', "'"):
            value = value[1:-1]
        found[key] = value
    return found


def load_env_file(path: str, environ: dict[str, str] | None = None) -> None:
    """Put an EnvironmentFile's variables into the process environment (they win over what
    is already set, as in a systemd unit); one clear line (EnvFileError, exit 78) otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise EnvFileError(
            f"--env-file {path}: cannot read it ({error.strerror or type(error).__name__})"
        ) from None
    except UnicodeDecodeError:
        raise EnvFileError(f"--env-file {path}: not UTF-8 text") from None
    try:
        values = parse_env_file(text)
    except EnvFileError as error:
        raise EnvFileError(f"--env-file {path}: {error}") from None
    (os.environ if environ is None else environ).update(values)

