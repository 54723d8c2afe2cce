"""A rate-limited consumer app for subprocess tests, configured by environment variables
(tests/integration/test_rate_limit.py runs several at once).

TEST_QUEUE, TEST_EXCHANGE, OUTBOX_RELAY_SCHEMA: where it consumes and writes.
TEST_RATE_LIMIT: the handler's rate_limit ('' for none); TEST_RATE_KEY: its
rate_limit_key ('' for none); TEST_PREFETCH_MULTIPLIER: the app's.
A message whose body has {"say_429": SECONDS} raises RateLimited(retry_after=SECONDS) the
first time any process handles it; each call of such a message is recorded in
<schema>.calls (outside the handler's transaction). The work, with this process's id
and the time, goes to <schema>.rate_effects (inside it).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message, RateLimited

SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")
app = ConsumerApp(
    name="rate-test",
    schema=SCHEMA,
    concurrency=2,
    prefetch_multiplier=int(os.environ.get("TEST_PREFETCH_MULTIPLIER", "2")),
)


@app.handler(
    exchange=os.environ.get("TEST_EXCHANGE", "unset"),
    queue=os.environ.get("TEST_QUEUE", "unset"),
    bindings=["#"],
    retry_delays=[0.5],
    rate_limit=os.environ.get("TEST_RATE_LIMIT") or None,
    rate_limit_key=os.environ.get("TEST_RATE_KEY") or None,
)
def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
    body = message.body if isinstance(message.body, dict) else {}
    if "say_429" in body and record_call(message) == 0:
        raise RateLimited(retry_after=float(body["say_429"]))
    tx.execute(
        sql.SQL(
            "INSERT INTO {}.rate_effects (message_id, attempt, tenant, pid, at) "
            "VALUES (%s, %s, %s, %s, clock_timestamp())"
        ).format(sql.Identifier(SCHEMA)),
        [message.message_id, message.attempt, message.headers.get("tenant"), os.getpid()],
    )


def record_call(message: Message) -> int:
    """Record this call in its own transaction; how many calls came before it."""
    with psycopg.connect(os.environ["OUTBOX_RELAY_DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {0}.calls (message_id, at) VALUES (%s, clock_timestamp()) "
                "RETURNING (SELECT count(*) FROM {0}.calls WHERE message_id = %s)"
            ).format(sql.Identifier(SCHEMA)),
            [message.message_id, message.message_id],
        ).fetchone()
    return int(row[0]) if row else 0
