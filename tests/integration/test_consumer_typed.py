"""Typed handlers on the real broker and database: a payload that does not fit is parked at
once with the validation error; a SQLAlchemy Session shares the inbox row's transaction."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from outbox_relay.consumer import ConsumerApp, Message
from tests.support.broker import BrokerHelper
from tests.support.consumer import effects, make_effects_table, publish, running_consumer
from tests.support.relay import wait_for

pytestmark = pytest.mark.integration


class Payment(msgspec.Struct):
    payment_id: str
    amount_cents: int


def new_app(database_url: str, amqp_url: str, schema: str) -> ConsumerApp:
    return ConsumerApp(
        name=f"typed-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
    )


def test_a_payload_that_does_not_fit_is_parked_at_once_with_the_validation_error(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    queue = broker.name("pay")
    seen: list[Payment] = []

    @app.handler(exchange=exchange, queue=queue, bindings=["pay.#"], retry_delays=[0.2])
    def on_payment(payment: Payment, tx: Any) -> None:
        seen.append(payment)

    with running_consumer(app, broker):
        publish(broker, exchange, "pay.card", b'{"payment_id": "p-1"}', message_id="bad")
        publish(
            broker,
            exchange,
            "pay.card",
            b'{"payment_id": "p-2", "amount_cents": 5}',
            message_id="good",
        )
        parked = broker.drain(f"{queue}.parking", expect=1, timeout_s=10)
        assert wait_for(lambda: len(seen) == 1)

    assert seen == [Payment(payment_id="p-2", amount_cents=5)]
    assert [p.properties.message_id for p in parked] == ["bad"]
    headers = parked[0].properties.headers
    assert headers["outbox-attempt"] == 1  # never retried
    assert headers["outbox-error-type"] == "outbox_relay.consumer.errors.InvalidPayloadError"
    assert "does not fit Payment" in headers["outbox-error-message"]
    assert "amount_cents" in headers["outbox-error-message"]
    assert "msgspec.ValidationError" in headers["outbox-error-trace"]
    assert json.loads(parked[0].body) == {"payment_id": "p-1"}
    assert broker.depth(on_payment.route.tiers[0][0]) == 0


def test_a_session_handler_has_its_effects_once_and_rolls_back_with_a_failure(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    queue = broker.name("audit")
    insert = text(
        f'INSERT INTO "{schema}".effects (message_id, attempt, note) VALUES (:id, :attempt, :note)'
    )

    @app.handler(exchange=exchange, queue=queue, bindings=["#"], retry_delays=[0.2])
    def on_event(message: Message, session: Session) -> None:
        session.execute(insert, {"id": message.message_id, "attempt": message.attempt, "note": "s"})
        session.commit()  # a savepoint: the consumer commits after the handler
        if message.body.get("fail") and message.attempt == 1:
            raise RuntimeError("first attempt fails after the session committed")

    with running_consumer(app, broker):
        for n in range(3):
            body = json.dumps({"n": n, "fail": n == 1}).encode()
            publish(broker, exchange, "audit.x", body, message_id=f"e-{n}")
        publish(broker, exchange, "audit.x", b'{"n": 0}', message_id="e-0")  # a duplicate
        assert wait_for(lambda: len(effects(database_url, schema)) >= 3, timeout_s=10)
        time.sleep(0.5)  # room for a wrong fourth effect

    assert sorted((m, a) for m, a, _ in effects(database_url, schema)) == [
        ("e-0", 1),
        ("e-1", 2),
        ("e-2", 1),
    ]
