"""A consumer app for subprocess tests, configured by environment variables.

TEST_QUEUE, TEST_EXCHANGE, OUTBOX_RELAY_SCHEMA: where it consumes and writes.
TEST_KILL_AFTER_COMMIT=1: SIGKILL this process after a handler committed, before the ack.
TEST_HANDLER_SLEEP_S: seconds each handler sleeps after recording that it started.
TEST_ASYNC_HANDLER=1: the handler is an async def one (AsyncConnection, asyncio.sleep);
its effects are noted "started async" instead of "started".
TEST_QUEUE_TYPE: its queues' type, "classic" unless told ("quorum" on a cluster).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message
from tests.support.consumer import record_effect

SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")
app = ConsumerApp(name="subprocess-test", schema=SCHEMA, concurrency=1)


register = app.handler(
    exchange=os.environ.get("TEST_EXCHANGE", "unset"),
    queue=os.environ.get("TEST_QUEUE", "unset"),
    bindings=["#"],
    retry_delays=[0.5],
    queue_type=os.environ.get("TEST_QUEUE_TYPE", "classic"),
)


def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
    record_effect(tx, SCHEMA, message.message_id, message.attempt, "started")
    print(f"started {message.message_id}", flush=True)  # read by the test
    time.sleep(float(os.environ.get("TEST_HANDLER_SLEEP_S", "0")))


async def on_message_async(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
    """TEST_ASYNC_HANDLER=1: the same, as an async handler."""
    await tx.execute(
        sql.SQL("INSERT INTO {}.effects (message_id, attempt, note) VALUES (%s, %s, %s)").format(
            sql.Identifier(SCHEMA)
        ),
        [message.message_id, message.attempt, "started async"],
    )
    print(f"started {message.message_id}", flush=True)  # read by the test
    await asyncio.sleep(float(os.environ.get("TEST_HANDLER_SLEEP_S", "0")))


register(on_message_async if os.environ.get("TEST_ASYNC_HANDLER") == "1" else on_message)


@app.after_commit
def kill_if_asked(_message: Message) -> None:
    if os.environ.get("TEST_KILL_AFTER_COMMIT") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
