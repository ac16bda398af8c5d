"""The Evolution API (v2.3.6) client: typed calls, typed results, typed errors."""

from listener.evolution.client import KEY_CHECK_INSTANCE_NAME, EvolutionClient
from listener.evolution.errors import (
    AlreadyExistsError,
    AuthError,
    EvolutionError,
    InvalidResponseError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    ServiceUnavailableError,
    TransientError,
    error_for_status,
    parse_error_message,
    parse_retry_after,
)
from listener.evolution.models import (
    ALL_WEBHOOK_EVENTS,
    CreatedInstance,
    InstanceInfo,
    ServerInfo,
    WebhookSpec,
    WebhookState,
)

__all__ = [
    "ALL_WEBHOOK_EVENTS",
    "KEY_CHECK_INSTANCE_NAME",
    "AlreadyExistsError",
    "AuthError",
    "CreatedInstance",
    "EvolutionClient",
    "EvolutionError",
    "InstanceInfo",
    "InvalidResponseError",
    "NotFoundError",
    "PermanentError",
    "RateLimitedError",
    "ServerInfo",
    "ServiceUnavailableError",
    "TransientError",
    "WebhookSpec",
    "WebhookState",
    "error_for_status",
    "parse_error_message",
    "parse_retry_after",
]
