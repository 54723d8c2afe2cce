"""Settings of the relay daemon, built once by the CLI and checked before anything connects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_RULE, usable_dead_peer_timeout
from outbox_relay.errors import ConfigurationError
from outbox_relay.relay import RelaySettings
from outbox_relay.store.deadline import DB_TIMEOUT_RULE, DB_TIMEOUT_S, usable_db_timeout
from outbox_relay.store.relay_store import ORDER_GATE_MAX_WAIT_S
from outbox_relay.validation import require, require_schema_name

DEFAULT_DATABASE_URL = "postgresql://localhost:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_SCHEMA = "public"
MAX_SECRET_FILE_BYTES = 64 * 1024


def read_secret_file(path: Path, *, option: str) -> str:
    """The URL in a secret file, without the trailing newline editors and `echo` add.

    The error names the file and the problem, never the content.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"{option}: cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigurationError(f"{option}: {path} is larger than a URL can be")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{option}: {path} is not UTF-8 text") from exc
    if not text:
        raise ConfigurationError(f"{option}: {path} is empty")
    if "\n" in text:
        raise ConfigurationError(f"{option}: {path} holds more than one line; put only the URL")
    return text


@dataclass(frozen=True)
class RunSettings:
    database_url: str
    amqp_url: str
    schema: str
    relay: RelaySettings
    confirm_timeout_s: float
    dead_peer_timeout_s: float
    listen_database_url: str | None = None
    db_timeout_s: float = DB_TIMEOUT_S
    # Publish a keyed row only once no older transaction could still commit an earlier
    # row of its key, waiting at most order_gate_max_wait_s (see PostgresStore).
    order_gate: bool = False
    order_gate_max_wait_s: float = ORDER_GATE_MAX_WAIT_S

    def __post_init__(self) -> None:
        require_schema_name(self.schema, label="--schema")
        for flag, url in (
            ("--database-url", self.database_url),
            ("--listen-database-url", self.listen_database_url),
        ):
            if (
                url is not None
                and not url.startswith(("postgresql://", "postgres://"))
                and "=" not in url
            ):
                raise ConfigurationError(
                    f"{flag}: expected postgresql://user@host:port/dbname, got a value "
                    f"starting {url[:12]!r}"
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
            (
                usable_dead_peer_timeout(self.dead_peer_timeout_s),
                f"--dead-peer-timeout {DEAD_PEER_TIMEOUT_RULE}",
            ),
            (usable_db_timeout(self.db_timeout_s), f"--db-timeout {DB_TIMEOUT_RULE}"),
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
        require(checks)
