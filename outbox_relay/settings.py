"""Settings of the relay daemon, built once by the CLI and checked before anything connects."""

from __future__ import annotations

from dataclasses import dataclass

from outbox_relay.errors import ConfigurationError
from outbox_relay.relay import RelaySettings
from outbox_relay.store.sqlfiles import validate_schema_name

DEFAULT_DATABASE_URL = "postgresql://localhost:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_SCHEMA = "public"


@dataclass(frozen=True)
class RunSettings:
    database_url: str
    amqp_url: str
    schema: str
    relay: RelaySettings
    confirm_timeout_s: float

    def __post_init__(self) -> None:
        try:
            validate_schema_name(self.schema)
        except ValueError as exc:
            raise ConfigurationError(f"--schema: {exc}") from exc
        if (
            not self.database_url.startswith(("postgresql://", "postgres://"))
            and "=" not in self.database_url
        ):
            raise ConfigurationError(
                f"--database-url: expected postgresql://user@host:port/dbname, got a value "
                f"starting {self.database_url[:12]!r}"
            )
        if not self.amqp_url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                "--amqp-url: expected amqp://user:password@host:port/vhost (or amqps://)"
            )
        relay = self.relay
        checks = [
            (relay.batch_size >= 1, "--batch-size must be at least 1"),
            (relay.batch_size <= 10_000, "--batch-size above 10000 holds locks too long; use less"),
            (relay.poll_interval_s > 0, "--poll-interval must be positive"),
            (relay.max_attempts >= 1, "--max-attempts must be at least 1"),
            (self.confirm_timeout_s > 0, "--confirm-timeout must be positive"),
            (relay.retry_base_s > 0, "--retry-base must be positive"),
            (
                relay.retry_max_s >= relay.retry_base_s,
                "--retry-max must be at least --retry-base",
            ),
            (relay.heartbeat_interval_s > 0, "--heartbeat-interval must be positive"),
            (
                relay.lease_ttl_s >= 2 * relay.heartbeat_interval_s + 1,
                (
                    "--lease-ttl must be at least twice --heartbeat-interval plus one second, "
                    "or one late heartbeat loses the partitions"
                ),
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
