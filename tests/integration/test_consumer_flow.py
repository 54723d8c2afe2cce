"""Flow control per handler on the real broker and database: concurrency and prefetch per
handler, retry_on/park_on, and a handler whose own database connection is lost."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from outbox_relay.consumer import ConsumerApp, Message
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

HELD_S = 15.0  # the longest a held-up handler waits for the test to let it go


def new_app(amqp_url: str, schema: str, **kw: Any) -> ConsumerApp:
    return ConsumerApp(name=f"flow-{uuid.uuid4().hex[:6]}", schema=schema, amqp_url=amqp_url, **kw)


def outcomes(logs: list[dict[str, Any]], queue: str) -> list[str]:
    return [
        e["outcome"] for e in logs if e.get("event") == "consumer.message" and e["queue"] == queue
    ]


def test_a_slow_handler_with_its_own_concurrency_does_not_starve_a_fast_one(
    amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    slow_queue, fast_queue = broker.name("slow"), broker.name("fast")
    app = new_app(amqp_url, schema, concurrency=2, prefetch_multiplier=2)
    release = threading.Event()
    slow_running: list[str] = []
    fast_done: list[str] = []

    @app.handler(exchange=exchange, queue=slow_queue, bindings=["slow"], concurrency=1)
    def slow(message: Message) -> None:
        slow_running.append(str(message.message_id))
        release.wait(HELD_S)

    @app.handler(exchange=exchange, queue=fast_queue, bindings=["fast"])
    def fast(message: Message) -> None:
        fast_done.append(str(message.message_id))

    try:
        with capture_logs() as logs, running_consumer(app, broker):
            for n in range(10):
                publish(broker, exchange, "slow", b"{}", message_id=f"s-{n}")
            assert wait_for(lambda: len(slow_running) >= 1)
            for n in range(20):
                publish(broker, exchange, "fast", b"{}", message_id=f"f-{n}")
            # Every fast message is handled while the slow handler holds its one worker.
            assert wait_for(lambda: len(fast_done) == 20, timeout_s=10)
            assert slow_running == ["s-0"]
            # Its prefetch is its own (1 x 2): the broker keeps the other 8 ready.
            assert wait_for(lambda: broker.depth(slow_queue) == 8, timeout_s=5)
            release.set()
            assert wait_for(lambda: len(outcomes(logs, slow_queue)) == 10, timeout_s=15)
    finally:
        release.set()
    assert sorted(slow_running) == sorted(f"s-{n}" for n in range(10))
    assert outcomes(logs, fast_queue) == ["handled"] * 20
    assert broker.depth(slow_queue) == broker.depth(fast_queue) == 0


class OutOfStockError(LookupError):
    pass


def test_retry_on_and_park_on_decide_which_failures_retry(
    amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.name("picky")
    app = new_app(amqp_url, schema)
    calls: list[tuple[str, int]] = []
    errors = {"timeout": TimeoutError("the API is slow"), "stock": OutOfStockError("sku-7")}

    @app.handler(
        exchange=exchange,
        queue=queue,
        max_attempts=2,
        retry_delays=[0.2],
        retry_on=(TimeoutError, LookupError),
        park_on=OutOfStockError,
    )
    def picky(message: Message) -> None:
        kind = message.body["kind"]
        calls.append((kind, message.attempt))
        raise errors.get(kind, ValueError(f"unexpected {kind}"))

    with running_consumer(app, broker):
        for kind in ("timeout", "stock", "bug"):
            publish(broker, exchange, "k", json.dumps({"kind": kind}).encode(), message_id=kind)
        parked = broker.drain(f"{queue}.parking", expect=3, timeout_s=15)

    by_kind = {json.loads(p.body)["kind"]: p.properties.headers or {} for p in parked}
    # retry_on: retried until max_attempts; park_on (a subclass of a retry_on class) and
    # anything outside retry_on: parked at once, with the error.
    assert sorted(calls) == [("bug", 1), ("stock", 1), ("timeout", 1), ("timeout", 2)]
    assert by_kind["timeout"]["outbox-attempt"] == 2
    assert by_kind["stock"]["outbox-attempt"] == 1
    assert by_kind["stock"]["outbox-error-type"].endswith("OutOfStockError")
    assert by_kind["bug"]["outbox-attempt"] == 1
    assert by_kind["bug"]["outbox-error-message"] == "unexpected bug"


def terminate(database_url: str, pid: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.parametrize("style", ["sync", "async", "sqlalchemy"])
def test_a_handler_whose_connection_is_killed_is_requeued_without_spending_an_attempt(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, style: str
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    queue = broker.name("killed")
    # One attempt only: a lost connection counted as a failure would park the message.
    app = new_app(amqp_url, schema, database_url=database_url)
    runs: list[int] = []

    if style == "async":

        @app.handler(exchange=exchange, queue=queue, max_attempts=1)
        async def on_message(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
            runs.append(message.attempt)
            if len(runs) == 1:  # a failover in the middle of the handler
                row = await (await tx.execute("SELECT pg_backend_pid()")).fetchone()
                assert row is not None
                terminate(database_url, row[0])
            await tx.execute(
                sql.SQL("INSERT INTO {}.effects (message_id, attempt) VALUES (%s, %s)").format(
                    sql.Identifier(schema)
                ),
                [message.message_id, message.attempt],
            )
    elif style == "sqlalchemy":  # the driver's error arrives wrapped by SQLAlchemy

        @app.handler(exchange=exchange, queue=queue, max_attempts=1)
        def on_message(message: Message, session: Session) -> None:
            runs.append(message.attempt)
            if len(runs) == 1:
                terminate(database_url, session.execute(text("SELECT pg_backend_pid()")).one()[0])
            session.execute(
                text(f'INSERT INTO "{schema}".effects (message_id, attempt) VALUES (:m, :a)'),
                {"m": message.message_id, "a": message.attempt},
            )
    else:

        @app.handler(exchange=exchange, queue=queue, max_attempts=1)
        def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
            runs.append(message.attempt)
            if len(runs) == 1:
                row = tx.execute("SELECT pg_backend_pid()").fetchone()
                assert row is not None
                terminate(database_url, row[0])
            record_effect(tx, schema, message.message_id, message.attempt)

    with capture_logs() as logs, running_consumer(app, broker, reconnect_max_s=1.0):
        publish(broker, exchange, "k", b"{}", message_id="m-1")
        assert wait_for(lambda: len(effects(database_url, schema)) == 1, timeout_s=15)
        assert wait_for(lambda: len(outcomes(logs, queue)) == 2)

    # Once, at attempt 1.
    assert [(m, attempt) for m, attempt, _ in effects(database_url, schema)] == [("m-1", 1)]
    assert runs == [1, 1]
    assert outcomes(logs, queue) == ["requeued", "handled"]
    requeued = next(e for e in logs if e.get("outcome") == "requeued")
    assert "connection lost in the handler" in requeued["error"]
    events = [e["event"] for e in logs]
    assert "consumer.database_unavailable" in events
    assert "consumer.database_recovered" in events
    assert broker.depth(f"{queue}.parking") == 0
