"""The consumer's settings: how the runner connects and how much it runs at once, made by
:meth:`ConsumerApp.settings <outbox_relay.consumer.app.ConsumerApp.settings>` and checked
before anything connects."""

from __future__ import annotations

from dataclasses import dataclass, fields

from outbox_relay.dead_peer import (
    DEAD_PEER_TIMEOUT_RULE,
    DEAD_PEER_TIMEOUT_S,
    usable_dead_peer_timeout,
)
from outbox_relay.errors import ConfigurationError
from outbox_relay.misconfiguration import UNHEALTHY_AFTER_S
from outbox_relay.store.deadline import DB_TIMEOUT_RULE, DB_TIMEOUT_S, usable_db_timeout
from outbox_relay.validation import require, require_schema_name

CONCURRENCY = 4
PREFETCH_MULTIPLIER = 2
SHUTDOWN_GRACE_S = 30.0
INBOX_RETENTION_S = 7 * 24 * 3600.0
INBOX_PURGE_INTERVAL_S = 600.0
HTTP_HOST = "0.0.0.0"  # noqa: S104 - probes reach a pod on its own address
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"


@dataclass(frozen=True)
class ConsumerSettings:
    """How the runner connects and how much it runs at once; checked before connecting."""

    name: str
    schema: str = "public"
    database_url: str | None = None
    amqp_url: str = DEFAULT_AMQP_URL
    concurrency: int = CONCURRENCY
    prefetch_multiplier: int = PREFETCH_MULTIPLIER
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    inbox_retention_s: float = INBOX_RETENTION_S
    inbox_purge_interval_s: float = INBOX_PURGE_INTERVAL_S
    reconnect_max_s: float = 30.0
    dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S
    db_timeout_s: float = DB_TIMEOUT_S  # each SDK round trip: inbox insert, commit, rollback
    http_port: int = 0  # serve /healthz, /readyz and /metrics here; 0: no endpoints
    http_host: str = HTTP_HOST
    # /healthz fails once the database or the broker refused the configuration this long.
    unhealthy_after_s: float = UNHEALTHY_AFTER_S

    def __post_init__(self) -> None:
        require_schema_name(self.schema, label="schema")
        checks = [
            (bool(self.name.strip()), "name: give the consumer a name (it keys the inbox)"),
            (
                ":" not in self.name and "\x00" not in self.name,
                (
                    f"name: {self.name!r} contains ':' or NUL; the inbox keys rows "
                    "'<name>:<queue>' and the consumer grants match that prefix, so choose "
                    "a name without them"
                ),
            ),
            (self.concurrency >= 1, "concurrency must be at least 1"),
            (self.prefetch_multiplier >= 1, "prefetch_multiplier must be at least 1"),
            (self.shutdown_grace_s >= 0, "shutdown_grace must not be negative"),
            (self.inbox_retention_s > 0, "inbox_retention must be positive"),
            (self.inbox_purge_interval_s > 0, "inbox_purge_interval must be positive"),
            (0 <= self.http_port <= 65535, "http_port must be 0 (off) or a TCP port"),
            (self.unhealthy_after_s > 0, "unhealthy_after must be positive"),
            (self.amqp_url.startswith(("amqp://", "amqps://")), "amqp_url: expected amqp://..."),
            (
                usable_dead_peer_timeout(self.dead_peer_timeout_s),
                f"dead_peer_timeout {DEAD_PEER_TIMEOUT_RULE}",
            ),
            (usable_db_timeout(self.db_timeout_s), f"db_timeout {DB_TIMEOUT_RULE}"),
        ]
        require(checks)

    @property
    def prefetch(self) -> int:
        return self.concurrency * self.prefetch_multiplier


def settings_field(name: str) -> str:
    """The :class:`ConsumerSettings` field an override names: the field itself, or a
    duration named without its unit as ``ConsumerApp``'s arguments are (``shutdown_grace``
    for ``shutdown_grace_s``). Raises ConfigurationError naming the fields there are."""
    known = [field.name for field in fields(ConsumerSettings)]
    for candidate in (name, f"{name}_s"):
        if candidate in known:
            return candidate
    raise ConfigurationError(
        f"unknown consumer setting {name!r}; the settings are: {', '.join(known)}"
    )
