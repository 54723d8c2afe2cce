"""outbox-relay: a transactional outbox for PostgreSQL and RabbitMQ.

Write messages with :func:`publish` in the same transaction as your domain change; the
``outbox-relay run`` daemon publishes them to RabbitMQ with publisher confirms.
"""

from __future__ import annotations

from outbox_relay.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    InvalidMessageError,
    OutboxRelayError,
    StoreError,
    StoreUnavailableError,
    TopologyError,
)
from outbox_relay.message import Limits, OutboxMessage
from outbox_relay.producer import (
    publish,
    publish_async,
    publish_many,
    publish_many_async,
)
from outbox_relay.store.schema import drop_sql, schema_sql

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "InvalidMessageError",
    "Limits",
    "OutboxMessage",
    "OutboxRelayError",
    "StoreError",
    "StoreUnavailableError",
    "TopologyError",
    "drop_sql",
    "publish",
    "publish_async",
    "publish_many",
    "publish_many_async",
    "schema_sql",
]
