"""The consumer SDK against real PostgreSQL and RabbitMQ: effects once, retries, parking."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pika
import psycopg
import pytest
from structlog.testing import capture_logs

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message, Reject, Retry
from outbox_relay.consumer.runner import Runner
from outbox_relay.errors import TopologyError
from outbox_relay.store.inbox import purge_inbox
from tests.support.broker import BrokerHelper
from tests.support.consumer import (
    effects,
    make_effects_table,
    publish,
    record_effect,
    running_consumer,
    track,
)
from tests.support.relay import running_relay, wait_for

pytestmark = pytest.mark.integration


def new_app(database_url: str, amqp_url: str, schema: str, **kw: Any) -> ConsumerApp:
    return ConsumerApp(
        name=f"test-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
        **kw,
    )


def test_the_same_message_id_twice_has_one_effect(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    calls: list[str] = []

    @app.handler(exchange=exchange, queue=broker.name("orders"), bindings=["order.*"])
    def on_order(message: Message, tx: psycopg.Connection[Any]) -> None:
        calls.append(str(message.message_id))
        record_effect(tx, schema, message.message_id, message.attempt, str(message.body["n"]))

    ids = [str(uuid.uuid4()) for _ in range(5)]
    with capture_logs() as logs, running_consumer(app, broker):
        for i, message_id in enumerate(ids):
            body = json.dumps({"n": i}).encode()
            publish(broker, exchange, "order.created", body, message_id=message_id)
            publish(broker, exchange, "order.created", body, message_id=message_id)
        assert wait_for(lambda: sum(e.get("event") == "consumer.message" for e in logs) >= 10)
        assert broker.depth(broker.name("orders")) == 0

    assert sorted(m for m, _, _ in effects(database_url, schema)) == sorted(ids)
    assert sorted(calls) == sorted(ids)
    outcomes = [e["outcome"] for e in logs if e.get("event") == "consumer.message"]
    assert sorted(outcomes) == ["duplicate"] * 5 + ["handled"] * 5
    handled = next(e for e in logs if e.get("outcome") == "handled")
    assert {"consumer", "queue", "message_id", "attempt", "duration_ms"} <= handled.keys()
    assert not any("body" in e or "payload" in e for e in logs)


def test_message_fields_reach_the_handler(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    app = new_app(None, amqp_url, schema)  # type: ignore[arg-type]  # no database at all
    seen: list[Message] = []

    @app.handler(exchange=exchange, queue=broker.name("q"), bindings="invoice.#")
    def on_invoice(message: Message) -> None:
        seen.append(message)

    with running_consumer(app, broker):
        broker.channel.basic_publish(
            exchange,
            "invoice.paid",
            b'{"total": 12.5}',
            properties=pika.BasicProperties(
                message_id="m-1",
                content_type="application/json",
                headers={"tenant": "acme"},
                timestamp=1_700_000_000,
            ),
        )
        publish(
            broker,
            exchange,
            "invoice.raw",
            b"\x00\x01",
            message_id=None,
            content_type="application/octet-stream",
        )
        assert wait_for(lambda: len(seen) == 2)

    second, first = sorted(seen, key=lambda m: m.routing_key)  # invoice.paid, invoice.raw
    assert second.body == {"total": 12.5}
    assert second.message_id == "m-1"
    assert second.exchange == exchange
    assert second.headers["tenant"] == "acme"
    assert second.attempt == 1
    assert second.redelivered is False
    assert second.timestamp is not None
    assert int(second.timestamp.timestamp()) == 1_700_000_000
    assert first.body == b"\x00\x01"
    assert first.message_id is None


def test_failures_are_retried_after_the_configured_delays_then_parked_with_the_error(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    attempts: list[tuple[int, float]] = []
    queue = broker.name("pay")

    @app.handler(
        exchange=exchange,
        queue=queue,
        bindings=["pay.#"],
        max_attempts=3,
        retry_delays=[0.3, 0.6],
    )
    def on_pay(message: Message, tx: psycopg.Connection[Any]) -> None:
        attempts.append((message.attempt, time.monotonic()))
        record_effect(tx, schema, message.message_id, message.attempt)
        raise ValueError(f"card declined on attempt {message.attempt}")

    with running_consumer(app, broker):
        publish(
            broker,
            exchange,
            "pay.card",
            b'{"amount": 3}',
            message_id="pay-1",
            headers={"tenant": "acme"},
        )
        parked = broker.drain(f"{queue}.parking", expect=1, timeout_s=15)

    assert [n for n, _ in attempts] == [1, 2, 3]
    assert attempts[1][1] - attempts[0][1] >= 0.3
    assert attempts[2][1] - attempts[1][1] >= 0.6
    assert effects(database_url, schema) == []  # every attempt rolled back
    assert len(parked) == 1
    headers = parked[0].properties.headers
    assert parked[0].properties.message_id == "pay-1"
    assert json.loads(parked[0].body) == {"amount": 3}
    assert headers["outbox-attempt"] == 3
    assert headers["outbox-error-type"] == "ValueError"
    assert headers["outbox-error-message"] == "card declined on attempt 3"
    assert "ValueError: card declined on attempt 3" in headers["outbox-error-trace"]
    assert "on_pay" in headers["outbox-error-trace"]
    assert headers["outbox-failed-queue"] == queue
    assert headers["outbox-original-routing-key"] == "pay.card"
    assert headers["outbox-original-exchange"] == exchange
    assert headers["tenant"] == "acme"


def test_retry_asks_for_a_later_try_and_reject_parks_at_once(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    seen: list[tuple[str, int]] = []
    queue = broker.name("ship")

    @app.handler(exchange=exchange, queue=queue, retry_delays=[0.2, 5], max_attempts=5)
    def on_ship(message: Message, tx: psycopg.Connection[Any]) -> None:
        seen.append((str(message.message_id), message.attempt))
        if message.body["kind"] == "reject":
            raise Reject("address is not deliverable")
        if message.attempt == 1:
            raise Retry("warehouse busy", delay=0.1)

    with running_consumer(app, broker):
        publish(broker, exchange, "ship.x", b'{"kind": "reject"}', message_id="r-1")
        publish(broker, exchange, "ship.x", b'{"kind": "retry"}', message_id="t-1")
        parked = broker.drain(f"{queue}.parking", expect=1, timeout_s=10)
        assert wait_for(lambda: ("t-1", 2) in seen, timeout_s=4)

    assert sorted(seen) == [("r-1", 1), ("t-1", 1), ("t-1", 2)]
    assert parked[0].properties.message_id == "r-1"
    assert parked[0].properties.headers["outbox-error-message"] == "address is not deliverable"
    assert parked[0].properties.headers["outbox-attempt"] == 1
    assert broker.depth(f"{queue}.retry.5s") == 0


def test_an_undecodable_body_is_parked_and_the_consumer_goes_on(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    seen: list[Any] = []
    queue = broker.name("in")

    @app.handler(exchange=exchange, queue=queue)
    def on_in(message: Message, tx: psycopg.Connection[Any]) -> None:
        seen.append(message.body)

    with running_consumer(app, broker):
        publish(broker, exchange, "a", b"{not json", message_id="bad-1")
        publish(broker, exchange, "a", b'{"ok": 1}', message_id=None)  # no id: no inbox key
        publish(broker, exchange, "a", b'{"ok": 2}', message_id="good-1")
        parked = broker.drain(f"{queue}.parking", expect=2, timeout_s=10)
        assert wait_for(lambda: seen == [{"ok": 2}])

    reasons = {p.properties.message_id: p.properties.headers for p in parked}
    assert reasons["bad-1"]["outbox-error-type"].endswith("UndecodableMessageError")
    assert "not valid JSON" in reasons["bad-1"]["outbox-error-message"]
    assert "no message_id" in reasons[None]["outbox-error-message"]


def test_a_handler_past_its_timeout_is_rolled_back_and_retried_and_the_pool_goes_on(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema, concurrency=1)
    release = threading.Event()
    queue = broker.name("slow")

    @app.handler(exchange=exchange, queue=queue, timeout=0.5, retry_delays=[0.2])
    def on_slow(message: Message, tx: psycopg.Connection[Any]) -> None:
        record_effect(tx, schema, message.message_id, message.attempt)
        if message.body["slow"] and message.attempt == 1:
            release.wait(10)  # Python code cannot be interrupted: it returns later

    try:
        with capture_logs() as logs, running_consumer(app, broker):
            publish(broker, exchange, "k", b'{"slow": true}', message_id="slow-1")
            publish(broker, exchange, "k", b'{"slow": false}', message_id="fast-1")
            assert wait_for(lambda: len(effects(database_url, schema)) == 2, timeout_s=10)
            release.set()
            time.sleep(0.3)  # the abandoned handler returns; it must not commit
    finally:
        release.set()

    assert sorted(effects(database_url, schema)) == [("fast-1", 1, ""), ("slow-1", 2, "")]
    timed_out = [e for e in logs if e.get("error_type") == "HandlerTimeoutError"]
    assert [e["outcome"] for e in timed_out] == ["retried"]


def test_handlers_without_a_database_run_without_one(amqp_url: str, broker: BrokerHelper) -> None:
    exchange = broker.exchange()
    app = ConsumerApp(name="nodb", amqp_url=amqp_url)
    seen: list[Any] = []

    @app.handler(exchange=exchange, queue=broker.name("nodb"))
    def on_event(message: Message) -> None:
        seen.append(message.body)

    with running_consumer(app, broker, database_url=None):
        for n in range(20):
            publish(broker, exchange, "e", json.dumps(n).encode(), message_id=None)
        assert wait_for(lambda: len(seen) == 20)
    assert sorted(seen) == list(range(20))


def test_a_handler_without_tx_runs_without_the_inbox_beside_one_that_takes_it(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """One worker pool (and so one database session) for both: only the handler that takes
    the transaction gets inbox rows; the other needs no message id and is not deduplicated."""
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    seen: list[Any] = []

    @app.handler(exchange=exchange, queue=broker.name("with-tx"), bindings="tx.#")
    def with_tx(message: Message, tx: psycopg.Connection[Any]) -> None:
        seen.append(("tx", message.body))

    @app.handler(exchange=exchange, queue=broker.name("without"), bindings="plain.#")
    def without(message: Message) -> None:
        seen.append(("plain", message.body))

    with running_consumer(app, broker, concurrency=1):
        publish(broker, exchange, "tx.a", b"1", message_id="m-1")
        publish(broker, exchange, "plain.a", b"2", message_id=None)  # handled, not parked
        publish(broker, exchange, "plain.a", b"3", message_id="m-3")
        publish(broker, exchange, "plain.a", b"3", message_id="m-3")  # no inbox: runs again
        assert wait_for(lambda: len(seen) == 4, timeout_s=10)

    assert sorted(seen) == [("plain", 2), ("plain", 3), ("plain", 3), ("tx", 1)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        inbox = conn.execute(
            psycopg.sql.SQL("SELECT consumer, message_id FROM {}").format(
                psycopg.sql.Identifier(schema, "inbox")
            )
        ).fetchall()
    assert inbox == [(f"{app.name}:{broker.name('with-tx')}", "m-1")]


def test_end_to_end_producer_relay_consumer_handles_every_message_once(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)

    @app.handler(exchange=exchange, queue=broker.name("e2e"), bindings=["order.created"])
    def on_order(message: Message, tx: psycopg.Connection[Any]) -> None:
        record_effect(tx, schema, message.message_id, message.attempt, str(message.body["n"]))

    with running_consumer(app, broker):
        with psycopg.connect(database_url) as conn:
            ids = [
                str(
                    outbox_relay.publish(
                        conn,
                        exchange=exchange,
                        routing_key="order.created",
                        payload={"n": n},
                        schema=schema,
                    )
                )
                for n in range(200)
            ]
            conn.commit()
        with running_relay(database_url, amqp_url, schema):
            assert wait_for(lambda: len(effects(database_url, schema)) >= 200, timeout_s=30)

    rows = effects(database_url, schema)
    assert sorted(m for m, _, _ in rows) == sorted(ids)
    assert sorted(int(n) for _, _, n in rows) == list(range(200))


def test_quorum_queues_retry_through_their_delay_tiers(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    seen: list[int] = []
    queue = broker.name("quorum")

    @app.handler(exchange=exchange, queue=queue, queue_type="quorum", retry_delays=[0.2])
    def on_event(message: Message, tx: psycopg.Connection[Any]) -> None:
        seen.append(message.attempt)
        if message.attempt == 1:
            raise RuntimeError("first try fails")

    with running_consumer(app, broker):
        publish(broker, exchange, "k", b"{}", message_id="q-1")
        assert wait_for(lambda: seen == [1, 2], timeout_s=10)
    arguments = broker.channel.queue_declare(queue, passive=True)
    assert arguments.method.message_count == 0


def test_a_queue_declared_with_other_arguments_stops_the_consumer_with_the_reason(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue("taken")  # a plain queue: no dead-letter arguments
    app = new_app(database_url, amqp_url, schema)

    @app.handler(exchange=exchange, queue=queue)
    def on_event(message: Message, tx: psycopg.Connection[Any]) -> None:
        raise AssertionError("never consumed")

    track(broker, app)
    with pytest.raises(TopologyError, match=queue):
        Runner(app, app.settings()).run()


def test_inbox_rows_past_the_retention_window_are_purged_in_batches(
    database_url: str, schema: str
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            psycopg.sql.SQL(
                "INSERT INTO {}.inbox (consumer, message_id, processed_at) "
                "SELECT 'c', 'old-' || n, now() - interval '2 days' FROM generate_series(1, 25) n "
                "UNION ALL SELECT 'c', 'new-' || n, now() FROM generate_series(1, 5) n"
            ).format(psycopg.sql.Identifier(schema))
        )
        conn.commit()
    assert purge_inbox(database_url, schema=schema, older_than_s=86_400, batch=10) == 25
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            psycopg.sql.SQL("SELECT message_id FROM {}.inbox ORDER BY 1").format(
                psycopg.sql.Identifier(schema)
            )
        ).fetchall()
    assert [m for (m,) in left] == [f"new-{n}" for n in range(1, 6)]


def test_a_statement_running_past_the_timeout_is_cancelled_and_the_message_retried(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema, concurrency=1)
    finished: list[int] = []

    @app.handler(exchange=exchange, queue=broker.name("sql"), timeout=0.5, retry_delays=[0.2])
    def on_event(message: Message, tx: psycopg.Connection[Any]) -> None:
        record_effect(tx, schema, message.message_id, message.attempt)
        if message.attempt == 1:
            tx.execute("SELECT pg_sleep(30)")  # cancelled: the handler raises, is ignored
        finished.append(message.attempt)

    with running_consumer(app, broker):
        publish(broker, exchange, "k", b"{}", message_id="sql-1")
        assert wait_for(lambda: finished == [2], timeout_s=10)
    assert effects(database_url, schema) == [("sql-1", 2, "")]
