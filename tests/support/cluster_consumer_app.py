"""The consumer of the cluster tier, run as ``outbox-relay consume`` in a subprocess.

TEST_QUEUE, TEST_EXCHANGE, OUTBOX_RELAY_SCHEMA: where it consumes and writes. Its queue
is a quorum queue with a retry tier and a parking lot; each message's effect (its order
number and key) is written in the handler's transaction, next to the inbox row, so a
message handled twice would show as two effects.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message

SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")
app = ConsumerApp(name="cluster-test", schema=SCHEMA, concurrency=1)


@app.handler(
    exchange=os.environ.get("TEST_EXCHANGE", "unset"),
    queue=os.environ.get("TEST_QUEUE", "unset"),
    bindings=["#"],
    queue_type="quorum",
    retry_delays=[0.5],
)
def on_order(message: Message, tx: psycopg.Connection[Any]) -> None:
    body = message.body  # decoded JSON
    tx.execute(
        sql.SQL("INSERT INTO {} (n, key) VALUES (%s, %s)").format(
            sql.Identifier(SCHEMA, "effects")
        ),
        (body["n"], body["key"]),
    )
