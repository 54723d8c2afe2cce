"""The whole AMQP message through the real relay and broker: every property a producer
sets arrives as set, read back with pika's BasicProperties on a test queue, and by a
consumer SDK handler on its first delivery, on its retry and in the parking lot."""

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


WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
# A header of each type publish() sends; chosen so that a wrong type shows (1.0 is not 1).
TYPED_HEADERS: dict[str, Any] = {
    "score": 0.5,
    "whole": 1.0,
    "timelimit": [3.0, 1.5],
    # Its value, not its digits: pika writes Decimal("12.50") as 12.5 (docs/producing.md).
    "price": decimal.Decimal("12.50"),
    "at": WHEN,
    "raw": b"\x00\xff",
    "big": 2**62,
    "text": "order-42",
    "flag": False,
    "nothing": None,
    "nested": {"ratio": 2.75, "ok": True, "deeper": {"n": -7, "list": [1, 0.5, "x"]}},
    "array": [1, 0.5, "x", True, {"k": 1.0}, [2**40, 0.25]],
}


def assert_same(got: object, sent: object, path: str = "headers") -> None:
    """``got`` is ``sent``: the same values of the same types, all the way down."""
    assert type(got) is type(sent), f"{path}: {got!r} is not {sent!r}"
    if isinstance(sent, dict):
        assert isinstance(got, dict)
        assert sorted(got) == sorted(sent), path
        for key, value in sent.items():
            assert_same(got[key], value, f"{path}[{key!r}]")
    elif isinstance(sent, list):
        assert isinstance(got, list)
        assert len(got) == len(sent), path
        for n, (mine, theirs) in enumerate(zip(got, sent, strict=True)):
            assert_same(mine, theirs, f"{path}[{n}]")
    elif isinstance(sent, dt.datetime):
        assert isinstance(got, dt.datetime)
        assert (got, got.utcoffset()) == (sent, dt.timedelta(0)), path
    else:
        assert got == sent, path


def test_an_sdk_handler_sees_every_property_and_header_first_retried_and_parked(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """publish() -> relay -> SDK handler (fails) -> delay tier -> handler (fails again)
    -> parking lot: every property and header as published, at each step; the copies drop
    only ``expiration``, as docs/consumer.md says."""
    lenient_frames.install_field_codec()  # read the parked copy as the SDK does
    exchange = broker.exchange()
    queue = broker.name("props")
    app = ConsumerApp(
        name=f"test-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
    )
    seen: list[ConsumerMessage] = []

    @app.handler(exchange=exchange, queue=queue, bindings=["#"], max_attempts=2, retry_delays=[0.2])
    def on_order(message: ConsumerMessage, _tx: psycopg.Connection[Any]) -> None:
        seen.append(message)
        raise ValueError("always")

    with running_consumer(app, broker):
        with psycopg.connect(database_url) as conn:
            message_id = outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key="order.created",
                payload={"order_id": 42},
                headers=TYPED_HEADERS,
                expiration=dt.timedelta(minutes=5),
                schema=schema,
                **EVERY_PROPERTY,  # type: ignore[arg-type]
            )
            conn.commit()
        with running_relay(database_url, amqp_url, schema):
            parking = broker.drain(f"{queue}.parking", expect=1, timeout_s=20)

    assert [m.attempt for m in seen] == [1, 2]
    first, retried = seen
    for message in seen:
        assert {name: getattr(message, name) for name in EVERY_PROPERTY} == EVERY_PROPERTY
        assert (message.message_id, message.content_type, message.user_id) == (
            message_id,
            "application/json",
            None,
        )
        assert (message.exchange, message.routing_key) == (exchange, "order.created")
        assert message.body == {"order_id": 42}
        assert message.timestamp == first.timestamp
        assert_same({k: message.headers[k] for k in TYPED_HEADERS}, TYPED_HEADERS)
    assert first.timestamp is not None
    assert first.expiration == "300000"
    assert retried.expiration is None  # dropped from the copy: it would fight the tier's TTL

    [parked] = parking
    props = parked.properties
    assert {name: getattr(props, name) for name in EVERY_PROPERTY} == EVERY_PROPERTY
    assert (props.message_id, props.content_type, props.delivery_mode) == (
        message_id,
        "application/json",
        2,
    )
    assert props.timestamp == int(first.timestamp.timestamp())
    assert props.expiration is None
    assert json.loads(parked.body) == {"order_id": 42}
    assert_same({k: props.headers[k] for k in TYPED_HEADERS}, TYPED_HEADERS)
    assert props.headers["outbox-attempt"] == 2
    assert props.headers["outbox-error-type"] == "ValueError"
