"""The consumer app ``benchmarks.rate_limit`` runs as several ``outbox-relay consume``
processes, configured by environment variables: BENCH_EXCHANGE, BENCH_QUEUE,
OUTBOX_RELAY_SCHEMA, BENCH_TABLE (where each message's row goes, with the time it was
written), BENCH_RATE_LIMIT (the handler's rate_limit, '' for none)."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message

SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")
INSERT = sql.SQL("INSERT INTO {} (message_id, at) VALUES (%s, clock_timestamp())").format(
    sql.Identifier(SCHEMA, os.environ.get("BENCH_TABLE", "unset"))
)
app = ConsumerApp(name="bench-rate", schema=SCHEMA, concurrency=4)


@app.handler(
    exchange=os.environ.get("BENCH_EXCHANGE", "unset"),
    queue=os.environ.get("BENCH_QUEUE", "unset"),
    retry_delays=[1],
    declare_exchange=False,
    rate_limit=os.environ.get("BENCH_RATE_LIMIT") or None,
)
def handle(message: Message, tx: psycopg.Connection[Any]) -> None:
    tx.execute(INSERT, (message.message_id,))
