"""Consumer SDK: decorator handlers acked only after their work commits.

::

    from outbox_relay.consumer import ConsumerApp, Message, Retry, Reject

    app = ConsumerApp(name="billing", schema="public")

    @app.handler(exchange="orders", queue="billing.orders", bindings=["order.created"])
    def on_order(order: OrderCreated, message: Message, tx: psycopg.Connection) -> None:
        ...   # order: the body validated as a pydantic model (or dataclass, TypedDict,
              # msgspec Struct); tx: the transaction that also holds the inbox row

    @app.handler(exchange="orders", queue="shipping.orders", bindings=["order.paid"])
    async def ship(order: OrderPaid, tx: psycopg.AsyncConnection) -> None:
        ...   # the same, on an event loop: await asyncio clients and tx.execute(...)

Run with ``outbox-relay consume billing.handlers:app`` or ``app.run()``; test handlers with
:mod:`outbox_relay.consumer.testing`. See ``docs/consumer.md``.
"""

from __future__ import annotations

from outbox_relay.consumer.app import ConsumerApp
from outbox_relay.consumer.errors import (
    HandlerTimeoutError,
    InvalidPayloadError,
    RateLimited,
    Reject,
    Retry,
)
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.message import Message
from outbox_relay.consumer.rate_limit import RateLimit
from outbox_relay.consumer.settings import ConsumerSettings

__all__ = [
    "ConsumerApp",
    "ConsumerSettings",
    "Handler",
    "HandlerTimeoutError",
    "InvalidPayloadError",
    "Message",
    "RateLimit",
    "RateLimited",
    "Reject",
    "Retry",
]
