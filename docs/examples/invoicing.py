"""A handler that publishes: one link of a chain of services.

Invoicing consumes ``order.created``; for each order it writes an invoice and announces
``invoice.created`` to the next service, all in the one transaction that also records
the order's message in the inbox. The commit makes the three real together; a crash,
a timeout or an exception before it leaves none of them, and the order comes back.

    outbox-relay migrate                          # the inbox and the outbox
    outbox-relay run                              # publishes what the handler wrote
    outbox-relay consume invoicing:app            # this module on PYTHONPATH

The table lives in the connection's search path; the names come from the environment
so that the test suite (tests/faults/test_chain.py) runs this very file on names of its
own.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message

SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")  # where the inbox and outbox are
ORDERS = os.environ.get("INVOICING_ORDERS_EXCHANGE", "orders")
INVOICES = os.environ.get("INVOICING_INVOICES_EXCHANGE", "invoices")
QUEUE = os.environ.get("INVOICING_QUEUE", "invoicing.orders")

INVOICES_TABLE = """
CREATE TABLE IF NOT EXISTS invoices (
    id bigserial PRIMARY KEY,
    order_id bigint NOT NULL,
    customer text NOT NULL,
    message_id text NOT NULL  -- the id of its invoice.created message
)
"""

# concurrency=1: one order at a time, so a customer's invoices are written, and their
# messages published, in the order the orders arrived.
app = ConsumerApp(name="invoicing", schema=SCHEMA, concurrency=1)


@app.handler(exchange=ORDERS, queue=QUEUE, bindings=["order.created"])
def invoice_order(message: Message, tx: psycopg.Connection[Any]) -> None:
    order = message.body
    message_id = outbox_relay.publish(
        tx,  # the handler's transaction: the message is written, not sent
        exchange=INVOICES,
        routing_key="invoice.created",
        payload={"order_id": order["order_id"], "customer": order["customer"]},
        partition_key=order["customer"],  # per-customer order, kept by the relay
        schema=SCHEMA,
    )
    tx.execute(
        "INSERT INTO invoices (order_id, customer, message_id) VALUES (%s, %s, %s)",
        (order["order_id"], order["customer"], message_id),
    )
