"""The consumer guide's rate-limited handler (docs/consumer.md): an SMS provider allows
20 messages a second for the whole account, so the limit holds across every process of
the app. tests/integration/test_guide_rate_limits.py runs it in several processes."""

from __future__ import annotations

from typing import Any

import psycopg
from pydantic import BaseModel

from outbox_relay.consumer import ConsumerApp

app = ConsumerApp(name="notifications")


class OrderShipped(BaseModel):
    order_id: int
    phone: str


class SmsClient:
    """Stands in for the SMS provider's HTTP client."""

    def send(self, phone: str, text: str) -> str:
        return f"sms-{abs(hash((phone, text))) % 10**8}"


sms = SmsClient()


@app.handler(
    exchange="orders",
    queue="notifications.sms",
    bindings=["order.shipped"],
    rate_limit="20/s",  # the provider's limit, for all our processes together
)
def text_customer(order: OrderShipped, tx: psycopg.Connection[Any]) -> None:
    """Each delivery waits (unacked, outside any transaction) for its token, then runs."""
    receipt = sms.send(order.phone, f"Order {order.order_id} is on its way")
    tx.execute(
        "INSERT INTO sms_sent (order_id, receipt, sent_at) VALUES (%s, %s, clock_timestamp())",
        (order.order_id, receipt),
    )
