"""The whole AMQP message through the real relay and broker: every property a producer
sets arrives as set, read back with pika's BasicProperties on a test queue."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

import outbox_relay
from outbox_relay.consumer import ConsumerApp, lenient_frames
from outbox_relay.consumer import Message as ConsumerMessage
from tests.support.broker import BrokerHelper
from tests.support.consumer import publish, running_consumer
from tests.support.relay import one_batch, outbox_rows, running_relay, wait_for

pytestmark = pytest.mark.integration

EVERY_PROPERTY: dict[str, object] = {
    "correlation_id": "req-42",
    "reply_to": "replies.shop",
    "priority": 9,
    "type": "order.created",
    "app_id": "shop",
    "content_encoding": "gzip",
}


def insert_by_sql(
    database_url: str, schema: str, exchange: str, rows: list[dict[str, object]]
) -> None:
    """Rows as a plain SQL writer inserts them, each with ``{"n": index}`` as its payload
    and the given columns (message_id defaults to a random UUID, properties to NULL)."""
    with psycopg.connect(database_url) as conn:
        for n, row in enumerate(rows):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.outbox (message_id, exchange, routing_key, payload,"
                    " content_type, properties) VALUES (coalesce(%s, gen_random_uuid()::text),"
                    " %s, 'k', %s, 'application/json', %s::jsonb)"
                ).format(sql.Identifier(schema)),
                (
                    row.get("message_id"),
                    exchange,
                    json.dumps({"n": n}).encode(),
                    row.get("properties"),
                ),
            )
        conn.commit()


def test_every_property_set_by_publish_arrives_as_set(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"), **{"x-max-priority": 10})
    with psycopg.connect(database_url) as conn:
        one = outbox_relay.publish(
            conn,
            exchange=exchange,
            routing_key="one",
            payload=b"\x1f\x8b",
            content_type="application/json",
            expiration=dt.timedelta(minutes=5),
            schema=schema,
            **EVERY_PROPERTY,  # type: ignore[arg-type]
        )
        many = outbox_relay.publish_many(
            conn,
            [
                outbox_relay.OutboxMessage(
                    exchange, "many", {"n": 1}, correlation_id="c-1", priority=0, expiration=1.5
                ),
                outbox_relay.OutboxMessage(exchange, "plain", {"n": 2}),
            ],
            schema=schema,
        )
        conn.commit()
    stored = outbox_rows(database_url, schema, "properties")
    assert stored[2] == (None,)  # a message without properties stores NULL

    with running_relay(database_url, amqp_url, schema):
        received = {r.routing_key: r for r in broker.drain(queue, expect=3)}

    props = received["one"].properties
    assert props.message_id == str(one)
    assert {name: getattr(props, name) for name in EVERY_PROPERTY} == EVERY_PROPERTY
    assert props.expiration == "300000"
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert received["one"].body == b"\x1f\x8b"
    props = received["many"].properties
    assert (props.message_id, props.correlation_id, props.priority, props.expiration) == (
        str(many[0]),
        "c-1",
        0,
        "1500",
    )
    plain = received["plain"].properties
    assert [getattr(plain, name) for name in (*EVERY_PROPERTY, "expiration")] == [None] * 7


def test_rabbitmq_honours_the_expiration_as_sent(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with psycopg.connect(database_url) as conn:
        for n, expiration in enumerate((0.2, None)):
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key="k",
                payload={"n": n},
                expiration=expiration,
                schema=schema,
            )
        conn.commit()
    with running_relay(database_url, amqp_url, schema):
        assert wait_for(lambda: not outbox_rows(database_url, schema))
    assert wait_for(lambda: broker.depth(queue) == 1, timeout_s=5)
    [kept] = broker.drain(queue, expect=1)
    assert json.loads(kept.body) == {"n": 1}


def test_a_row_whose_stored_properties_rabbitmq_would_refuse_fails_alone(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    properties = ['{"expiration": "soon"}', None, '{"priority": 300}', '{"reply_to": "r"}']
    insert_by_sql(database_url, schema, exchange, [{"properties": p} for p in properties])
    result = one_batch(database_url, amqp_url, schema)

    assert (result.claimed, result.published, result.failed) == (4, 2, 2)
    got = {json.loads(r.body)["n"]: r.properties for r in broker.drain(queue, expect=2)}
    assert sorted(got) == [1, 3]
    assert got[3].reply_to == "r"
    errors = [error for (error,) in outbox_rows(database_url, schema, "last_error")]
    assert "expiration 'soon'" in errors[0]
    assert "priority '300' is not an int from 0 to 255" in errors[1]


def test_the_default_exchange_routes_to_the_queue_named_by_the_routing_key(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    queue = broker.queue()
    missing = broker.name("no-such-queue")
    with psycopg.connect(database_url) as conn:
        for routing_key in (queue, missing):
            outbox_relay.publish(
                conn,
                exchange="",
                routing_key=routing_key,
                payload={"to": routing_key},
                schema=schema,
            )
        conn.commit()

    with running_relay(
        database_url, amqp_url, schema, max_attempts=2, retry_base_s=0.05, retry_max_s=0.1
    ):
        [got] = broker.drain(queue, expect=1)
        assert wait_for(
            lambda: outbox_rows(database_url, schema, "dead_at IS NOT NULL") == [(True,)]
        ), outbox_rows(database_url, schema, "routing_key, attempts, last_error")

    assert json.loads(got.body) == {"to": queue}
    assert got.exchange == ""
    [(routing_key, error)] = outbox_rows(database_url, schema, "routing_key, last_error")
    assert routing_key == missing
    assert error.startswith(f"unroutable: no queue named '{missing}'")


def test_a_message_id_of_any_text_arrives_as_given(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    given = ["order-42-created", "01HZY3K8Q9ZJ8Y6V2R5W1T3M4N", "é" * 127, "x" * 255]
    with psycopg.connect(database_url) as conn:
        returned = [
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key="k",
                payload={},
                message_id=message_id,
                schema=schema,
            )
            for message_id in given
        ]
        default = outbox_relay.publish(
            conn, exchange=exchange, routing_key="k", payload={}, schema=schema
        )
        conn.commit()
    assert returned == given
    assert isinstance(default, str)

    with running_relay(database_url, amqp_url, schema):
        received = broker.drain(queue, expect=5)

    assert [r.properties.message_id for r in received] == [*given, default]


def test_a_row_whose_message_id_amqp_cannot_carry_fails_alone(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    ids = ["", "ok-1", "x" * 256, "ok-2"]
    insert_by_sql(database_url, schema, exchange, [{"message_id": i} for i in ids])
    result = one_batch(database_url, amqp_url, schema)

    assert (result.claimed, result.published, result.failed) == (4, 2, 2)
    assert [r.properties.message_id for r in broker.drain(queue, expect=2)] == ["ok-1", "ok-2"]
    errors = [error for (error,) in outbox_rows(database_url, schema, "last_error")]
    assert "message_id: is empty" in errors[0]
    assert "message_id is 256 bytes" in errors[1]


def test_header_values_arrive_with_their_amqp_types(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    lenient_frames.install_field_codec()  # read doubles as a consumer of the SDK does
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    headers = {
        "score": 0.5,
        "one": 1.0,
        "big": 1e16,
        "timelimit": [3.0, 1.5],
        "price": decimal.Decimal("12.50"),
        "at": when,
        "raw": b"\x00\xff",
        "n": 2**40,
        "nested": {"ratio": 2.75, "ok": True},
    }
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn, exchange=exchange, routing_key="k", payload={}, headers=headers, schema=schema
        )
        conn.commit()

    with running_relay(database_url, amqp_url, schema):
        [received] = broker.drain(queue, expect=1)

    got = received.properties.headers
    assert got == headers
    assert [type(got[k]) for k in ("score", "one", "big", "n")] == [float, float, float, int]
    assert [type(v) for v in got["timelimit"]] == [float, float]
    assert type(got["price"]) is decimal.Decimal
    assert type(got["raw"]) is bytes


def test_sdk_handlers_get_float_headers_intact_also_retried_and_parked(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    # What an aio-pika or kombu producer sends: doubles, and a 64-bit integer.
    lenient_frames.install_field_codec()
    exchange = broker.exchange()
    queue = broker.name("scores")
    app = ConsumerApp(
        name=f"test-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
    )
    seen: list[dict[str, Any]] = []

    @app.handler(exchange=exchange, queue=queue, bindings=["#"], max_attempts=2, retry_delays=[0.2])
    def on_score(message: ConsumerMessage, _tx: psycopg.Connection[Any]) -> None:
        seen.append(dict(message.headers))
        raise ValueError("always")

    sent = {"score": 0.5, "ratio": 2.75, "lst": [1, 0.5], "n": 2**40}
    with running_consumer(app, broker):
        publish(broker, exchange, "k", b"{}", message_id="s-1", headers=sent)
        parked = broker.drain(f"{queue}.parking", expect=1, timeout_s=15)

    assert len(seen) == 2
    for headers in seen:
        assert {k: headers[k] for k in sent} == sent
        assert type(headers["score"]) is float
        assert type(headers["n"]) is int
    [copy] = parked
    assert {k: copy.properties.headers[k] for k in sent} == sent
