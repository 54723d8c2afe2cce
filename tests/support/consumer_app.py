"""A consumer app for subprocess tests, configured by environment variables.

TEST_QUEUE, TEST_EXCHANGE, OUTBOX_RELAY_SCHEMA: where it consumes and writes.
TEST_KILL_AFTER_COMMIT=1: SIGKILL this process after a handler committed, before the ack.
TEST_HANDLER_SLEEP_S: seconds each handler sleeps after recording that it started.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg

from outbox_relay.consumer import ConsumerApp, Message
from tests.support.consumer import record_effect

SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")
app = ConsumerApp(name="subprocess-test", schema=SCHEMA, concurrency=1)


@app.handler(
    exchange=os.environ.get("TEST_EXCHANGE", "unset"),
    queue=os.environ.get("TEST_QUEUE", "unset"),
    bindings=["#"],
    retry_delays=[0.5],
)
def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
    record_effect(tx, SCHEMA, message.message_id, message.attempt, "started")
    print(f"started {message.message_id}", flush=True)  # read by the test
    time.sleep(float(os.environ.get("TEST_HANDLER_SLEEP_S", "0")))


@app.after_commit
def kill_if_asked(_message: Message) -> None:
    if os.environ.get("TEST_KILL_AFTER_COMMIT") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
