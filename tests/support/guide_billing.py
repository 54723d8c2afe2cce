"""The consumer guide's example service (docs/consumer.md): a typed handler without a
transaction, and one that consumes, writes and publishes in one transaction. Run by
tests/unit/test_guide_billing.py, tests/integration/test_guide_billing.py and
tests/integration/test_guide_services.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from pydantic import BaseModel, PositiveInt

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message

app = ConsumerApp(name="billing", schema="billing")


@dataclasses.dataclass
class InvoiceCreated:
    invoice_id: int
    order_id: int
    email: str


@app.handler(exchange="billing", queue="billing.mailer", bindings=["invoice.created"])
def mail_invoice(invoice: InvoiceCreated, message: Message) -> None:
    """No transaction: no database and no inbox, so a retry may mail twice."""
    send_mail(
        to=invoice.email,
        subject=f"Invoice {invoice.invoice_id} for order {invoice.order_id}",
        idempotency_key=message.message_id,
    )


class OrderPlaced(BaseModel):
    order_id: int
    total_cents: PositiveInt
    email: str


@app.handler(exchange="orders", queue="billing.orders", bindings=["order.placed"])
def bill_order(order: OrderPlaced, tx: psycopg.Connection[Any]) -> None:
    """Invoice the order and announce the invoice, in one transaction with the inbox row:
    the invoice and the event happen exactly once, or not at all."""
    row = tx.execute(
        "INSERT INTO billing.invoices (order_id, total_cents) VALUES (%s, %s) RETURNING id",
        (order.order_id, order.total_cents),
    ).fetchone()
    assert row is not None
    outbox_relay.publish(
        tx,
        exchange="billing",
        routing_key="invoice.created",
        payload={"invoice_id": row[0], "order_id": order.order_id, "email": order.email},
        partition_key=str(order.order_id),
        schema="billing",
    )


def send_mail(**mail: object) -> None:
    """Stands in for the mail service's client."""
    SENT.append(mail)


SENT: list[dict[str, object]] = []
