"""Two deliveries of one message at once: the second waits for the first's inbox row, for
part of the database deadline, then goes back to the queue without pausing anything."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.errors import InboxBusyError
from outbox_relay.store.deadline import Deadlines
from outbox_relay.store.inbox import HandlerSession, lock_wait_setting
from tests.support.broker import BrokerHelper
from tests.support.consumer import (
    effects,
    make_effects_table,
    publish,
    record_effect,
    running_consumer,
)
from tests.support.relay import wait_for

pytestmark = pytest.mark.integration


def _session(url: str, schema: str, *, db_timeout_s: float) -> HandlerSession:
    return HandlerSession(
        url=url,
        schema=schema,
        application_name="inbox-busy",
        deadlines=Deadlines(timeout_s=db_timeout_s, owner="inbox-busy"),
    )


def test_lock_wait_is_a_fraction_of_the_deadline() -> None:
    assert lock_wait_setting(15) == "10000ms"
    assert lock_wait_setting(1.5) == "1000ms"
    assert lock_wait_setting(0) == "0"  # no deadline: wait for the other handler's end


def test_a_delivery_behind_a_running_one_is_busy_before_the_deadline_and_keeps_its_connection(
    database_url: str, schema: str
) -> None:
    first = _session(database_url, schema, db_timeout_s=3)
    second = _session(database_url, schema, db_timeout_s=3)
    try:
        assert first.begin(consumer="c", message_id="m-1") is True
        started = time.monotonic()
        # InboxBusyError, not NoAnswerError: the lock wait (2 s), not the deadline, ended it.
        with pytest.raises(InboxBusyError, match="m-1 is being handled by another delivery"):
            second.begin(consumer="c", message_id="m-1")
        assert time.monotonic() - started >= 1.9, "it waited for the other delivery first"
        second.rollback()
        # The same connection goes on: not declared silent, not replaced.
        connection = second.connection
        assert second.begin(consumer="c", message_id="m-2") is True
        assert second.connection is connection
        second.commit()
        first.commit()
        assert second.begin(consumer="c", message_id="m-1") is False, "now a duplicate"
        second.commit()
    finally:
        first.close()
        second.close()


def test_the_handlers_statements_keep_the_sessions_lock_timeout(
    database_url: str, schema: str
) -> None:
    separator = "&" if "?" in database_url else "?"
    url = f"{database_url}{separator}options=-c%20lock_timeout%3D7s"
    session = _session(url, schema, db_timeout_s=3)
    try:
        assert session.begin(consumer="c", message_id="m") is True
        shown = session.connection.execute("SHOW lock_timeout").fetchone()
        assert shown == ("7s",), "the inbox insert's wait must not outlive it"
        session.rollback()
    finally:
        session.close()


def test_a_duplicate_delivered_while_the_first_runs_is_requeued_and_nothing_pauses(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = ConsumerApp(
        name=f"busy-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
        concurrency=2,
    )
    started = threading.Event()
    runs: list[str] = []

    @app.handler(exchange=exchange, queue=broker.name("busy"), bindings=["#"])
    def slow(message: Message, tx: psycopg.Connection[Any]) -> None:
        runs.append(str(message.message_id))
        started.set()
        record_effect(tx, schema, message.message_id, message.attempt, "x")
        time.sleep(4.5)  # two lock waits of 2 s, past the 3 s deadline

    message_id = str(uuid.uuid4())
    body = json.dumps({"n": 1}).encode()
    with capture_logs() as logs, running_consumer(app, broker, db_timeout_s=3):
        publish(broker, exchange, "k", body, message_id=message_id)
        assert started.wait(10)
        publish(broker, exchange, "k", body, message_id=message_id)
        # The first's commit frees the row, so the waiting duplicate can settle (and log)
        # before the first's ack is logged: wait for both, in either order.
        assert wait_for(
            lambda: (
                {"handled", "duplicate"}
                <= {e.get("outcome") for e in logs if e.get("event") == "consumer.message"}
            ),
            timeout_s=20,
        )
    settled = [e for e in logs if e.get("event") == "consumer.message"]
    busy = [e for e in settled if e.get("error_type") == "outbox_relay.errors.InboxBusyError"]
    assert busy, f"the second delivery waited behind the first: {settled}"
    assert all(e["outcome"] == "requeued" for e in busy)
    assert sorted(e["outcome"] for e in settled if e not in busy) == ["duplicate", "handled"]
    assert runs == [message_id], "the handler ran once"
    assert [m for m, _, _ in effects(database_url, schema)] == [message_id]
    assert not [e for e in logs if e.get("event") == "consumer.database_unavailable"]
    assert not [e for e in logs if "silent" in str(e.get("event", ""))]
