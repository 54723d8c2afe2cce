"""Stage B of the cluster tier's chain, run as ``outbox-relay consume`` in a subprocess:
the guide's invoicing link (docs/examples/invoicing.py) on a quorum queue.

TEST_QUEUE, TEST_EXCHANGE: where it consumes the producer's orders (``{"n", "key"}``).
INVOICING_INVOICES_EXCHANGE, OUTBOX_RELAY_SCHEMA: as for the example, whose handler
writes the invoice and publishes ``invoice.created`` through the outbox in the inbox
transaction (the database URL sets the search path to the schema: the example names its
table without one). TEST_FAIL_FIRST_EVERY=N: the first attempt at each order n with
``n % N == N - 1`` raises, so that order passes through the retry tier (a quorum queue
that dead-letters it back at least once) before its invoice is written; 0: none fails.
Its queues (main, retry tier, parking lot) are quorum queues.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import psycopg

from docs.examples.invoicing import invoice_order
from outbox_relay.consumer import ConsumerApp, Message

SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")
FAIL_FIRST_EVERY = int(os.environ.get("TEST_FAIL_FIRST_EVERY", "0"))
# concurrency=1, as the example: a customer's invoices are written in the orders' order.
app = ConsumerApp(name="cluster-invoicing", schema=SCHEMA, concurrency=1)


class FirstAttemptFailedError(Exception):
    """Raised on purpose: the first attempt at one order in FAIL_FIRST_EVERY fails."""


def fails_first(n: int, every: int) -> bool:
    return every > 0 and n % every == every - 1


@app.handler(
    exchange=os.environ.get("TEST_EXCHANGE", "unset"),
    queue=os.environ.get("TEST_QUEUE", "unset"),
    bindings=["#"],
    queue_type="quorum",
    retry_delays=[0.5],
)
def invoice(message: Message, tx: psycopg.Connection[Any]) -> None:
    n, key = message.body["n"], message.body["key"]
    if message.attempt == 1 and fails_first(n, FAIL_FIRST_EVERY):
        raise FirstAttemptFailedError(f"order {n} fails its first attempt on purpose")
    # The example reads an order as {"order_id", "customer"}.
    invoice_order(dataclasses.replace(message, body={"order_id": n, "customer": key}), tx)
