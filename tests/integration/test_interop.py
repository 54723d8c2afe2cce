"""The clients people use, against the real relay and broker, both ways.

The relay's output read by kombu, aio-pika and a FastStream subscriber with a pydantic
model: every property set through ``publish()`` and a header of each type arrive as set.
The consumer SDK fed by aio-pika and kombu producers: every header type, a duplicate, a
message without ``message_id`` and one without ``content_type`` get the documented
treatment (docs/consumer.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import kombu
import psycopg
import pytest
from faststream.rabbit import RabbitBroker, RabbitMessage, RabbitQueue
from pydantic import BaseModel
from structlog.testing import capture_logs

import outbox_relay
from outbox_relay.consumer import ConsumerApp, lenient_frames
from outbox_relay.consumer import Message as ConsumerMessage
from outbox_relay.consumer.failure import ERROR_MESSAGE_HEADER
from tests.support.broker import BrokerHelper
from tests.support.consumer import running_consumer
from tests.support.relay import one_batch, wait_for

pytestmark = pytest.mark.integration

WAIT_S = 15.0
WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
# A header of each type; the values are chosen so that a wrong type shows (1.0 is not 1).
HEADERS: dict[str, Any] = {
    "text": "order-42",
    "int": 42,
    "big": 2**62,
    "float": 0.5,
    "whole_float": 1.0,
    "bool": True,
    "none": None,
    "price": decimal.Decimal("12.5"),
    "at": WHEN,
    "raw": b"\x00\xff",
    "nested": {"ratio": 2.75, "ok": False, "deeper": {"n": -7}},
    "array": [1, 0.5, "x", True],
}
TYPES = {name: type(value) for name, value in HEADERS.items()}
PAYLOAD = {"order_id": 42, "total": "12.50", "items": ["book", "pen"]}


@dataclass
class Sent:
    """One message published through the outbox with every property set."""

    queue: str
    reply_to: str
    message_id: str = field(default_factory=lambda: f"order-{uuid.uuid4().hex[:8]}-created")
    before: int = field(default_factory=lambda: int(time.time()))

    @property
    def properties(self) -> dict[str, Any]:
        return {
            "correlation_id": "req-42",
            "reply_to": self.reply_to,
            "priority": 7,
            "type": "order.created",
            "app_id": "shop",
            "content_encoding": "utf-8",
            "message_id": self.message_id,
            "content_type": "application/json",
        }


def relay_one_message(database_url: str, amqp_url: str, schema: str, broker: BrokerHelper) -> Sent:
    """Publish one message through the outbox into a fresh queue and relay it."""
    exchange = broker.exchange()
    sent = Sent(queue=broker.queue(bind=(exchange, "order.*")), reply_to=broker.queue("replies"))
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn,
            exchange=exchange,
            routing_key="order.created",
            payload=PAYLOAD,
            headers=HEADERS,
            expiration=dt.timedelta(minutes=5),
            schema=schema,
            **sent.properties,
        )
        conn.commit()
    result = one_batch(database_url, amqp_url, schema)
    assert result.published == 1
    assert wait_for(lambda: broker.depth(sent.queue) == 1)
    return sent


def assert_headers(
    headers: dict[str, Any], *, naive_utc: bool = False, byte_array: type = bytes
) -> None:
    """Every header of HEADERS is there with its value and its type, nested ones too.

    ``naive_utc``: the client reads AMQP timestamps as naive datetimes in UTC (py-amqp,
    under kombu, does). ``byte_array``: the type the client gives AMQP byte arrays
    (pamqp, under aio-pika and FastStream, gives ``bytearray``).
    """
    got = {name: headers[name] for name in HEADERS}
    if naive_utc:
        assert got["at"].tzinfo is None
        got["at"] = got["at"].replace(tzinfo=dt.timezone.utc)
    else:
        assert got["at"].utcoffset() == dt.timedelta(0)
    assert got == HEADERS
    assert {name: type(value) for name, value in got.items()} == {**TYPES, "raw": byte_array}
    assert [type(v) for v in got["array"]] == [int, float, str, bool]
    assert type(got["nested"]["ratio"]) is float


def assert_timestamp(sent: Sent, timestamp: dt.datetime | int) -> None:
    seconds = timestamp if isinstance(timestamp, int) else _utc(timestamp).timestamp()
    assert sent.before <= seconds <= time.time() + 1


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


# -- the relay's output, read by each client ---------------------------------------------


def test_kombu_reads_every_property_and_header_type(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    sent = relay_one_message(database_url, amqp_url, schema, broker)
    received: list[kombu.Message] = []
    with kombu.Connection(amqp_url) as conn:
        queue = kombu.Queue(sent.queue, no_declare=True)
        with conn.Consumer(queue, callbacks=[lambda _body, m: received.append(m)]):
            conn.drain_events(timeout=WAIT_S)
        [message] = received
        message.ack()

    props = message.properties
    expected = sent.properties
    assert message.content_type == expected.pop("content_type")
    assert message.content_encoding == expected.pop("content_encoding")
    assert {name: props[name] for name in expected} == expected
    assert props["expiration"] == "300000"
    assert props["delivery_mode"] == 2
    assert_timestamp(sent, props["timestamp"])
    assert message.decode() == PAYLOAD
    assert_headers(message.headers, naive_utc=True)


def test_aio_pika_reads_every_property_and_header_type(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    sent = relay_one_message(database_url, amqp_url, schema, broker)

    async def read() -> aio_pika.abc.AbstractIncomingMessage:
        async with await aio_pika.connect(amqp_url) as conn:
            channel = await conn.channel()
            queue = await channel.get_queue(sent.queue, ensure=True)
            message = await queue.get(timeout=WAIT_S)
            await message.ack()
            return message

    message = asyncio.run(read())
    assert {name: getattr(message, name) for name in sent.properties} == sent.properties
    assert message.expiration == 300.0  # aio-pika reads the milliseconds as seconds
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert_timestamp(sent, message.timestamp)
    assert json.loads(message.body) == PAYLOAD
    assert_headers(dict(message.headers), byte_array=bytearray)


class Order(BaseModel):
    order_id: int
    total: decimal.Decimal
    items: list[str]


def test_a_faststream_subscriber_fills_its_pydantic_model_and_replies(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    sent = relay_one_message(database_url, amqp_url, schema, broker)

    async def serve() -> tuple[Order, RabbitMessage]:
        app_broker = RabbitBroker(amqp_url, logger=None)
        got: asyncio.Future[tuple[Order, RabbitMessage]] = asyncio.Future()

        @app_broker.subscriber(RabbitQueue(sent.queue, declare=False))
        async def on_order(order: Order, message: RabbitMessage) -> dict[str, Any]:
            got.set_result((order, message))
            return {"accepted": order.order_id}  # sent to reply_to, RPC style

        async with app_broker:
            await app_broker.start()
            result = await asyncio.wait_for(got, WAIT_S)
            await asyncio.sleep(0.2)  # let the reply go out before closing
            return result

    order, message = asyncio.run(serve())
    assert order == Order(order_id=42, total=decimal.Decimal("12.50"), items=["book", "pen"])
    assert (message.message_id, message.correlation_id, message.reply_to) == (
        sent.message_id,
        "req-42",
        sent.reply_to,
    )
    assert message.content_type == "application/json"
    raw = message.raw_message
    assert {name: getattr(raw, name) for name in sent.properties} == sent.properties
    assert raw.expiration == 300.0
    assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert raw.timestamp is not None
    assert_timestamp(sent, raw.timestamp)
    assert_headers(dict(message.headers), byte_array=bytearray)
    [reply] = broker.drain(sent.reply_to, expect=1, timeout_s=WAIT_S)
    assert json.loads(reply.body) == {"accepted": 42}
    assert reply.properties.correlation_id == "req-42"


# -- the consumer SDK, fed by each client -----------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """A message a foreign producer sends; None leaves the property out."""

    body: bytes
    message_id: str | None
    content_type: str | None = "application/json"


@dataclass
class Handled:
    message_id: str | None
    body: Any
    content_type: str | None
    headers: dict[str, Any]


def feed_the_sdk(
    database_url: str,
    schema: str,
    amqp_url: str,
    broker: BrokerHelper,
    send: Callable[[str, list[Outgoing]], None],
    outgoing: list[Outgoing],
    *,
    parked: int,
) -> tuple[list[Handled], list[Any]]:
    """Run a consumer app whose handler takes a transaction, let ``send`` publish
    ``outgoing`` to its exchange, and return what was handled and what was parked."""
    exchange = broker.exchange()
    queue = broker.name("sdk")
    app = ConsumerApp(
        name=f"interop-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
    )
    handled: list[Handled] = []

    @app.handler(exchange=exchange, queue=queue, bindings=["#"])
    def on_message(message: ConsumerMessage, _tx: psycopg.Connection[Any]) -> None:
        handled.append(
            Handled(message.message_id, message.body, message.content_type, dict(message.headers))
        )

    with capture_logs() as logs, running_consumer(app, broker):
        send(exchange, outgoing)
        # Every message settled: handled, absorbed as a duplicate or parked.
        settled = lambda: [e for e in logs if e["event"] == "consumer.message"]  # noqa: E731
        assert wait_for(lambda: len(settled()) == len(outgoing), timeout_s=WAIT_S), logs
        parking = broker.drain(f"{queue}.parking", expect=parked, timeout_s=WAIT_S)
    outcomes = sorted(e["outcome"] for e in settled())
    duplicates = len(outgoing) - len({o.message_id for o in outgoing})
    assert outcomes.count("duplicate") == duplicates
    assert outcomes.count("parked") == parked
    return handled, parking


def assert_fed(handled: list[Handled], parking: list[Any]) -> None:
    """The documented treatment of THREE: the duplicate absorbed by the inbox, the typed
    headers intact, the message without message_id parked with the reason."""
    by_id = {h.message_id: h for h in handled}
    assert sorted(by_id) == ["dup-1", "typed-1"]
    assert len(handled) == 2  # the second dup-1 was absorbed by the inbox
    assert by_id["dup-1"].body == {"n": 1}
    assert_headers(by_id["typed-1"].headers)
    [no_id] = parking  # parked with the reason: neither lost nor a crash
    assert no_id.body == b'{"n": 3}'
    assert no_id.properties.message_id is None
    reason = no_id.properties.headers[ERROR_MESSAGE_HEADER]
    assert "the message has no message_id, so the inbox cannot deduplicate it" in reason


THREE = [
    Outgoing(b'{"n": 1}', "dup-1"),
    Outgoing(b'{"n": 1}', "dup-1"),
    Outgoing(b'{"n": 2}', "typed-1"),
    Outgoing(b'{"n": 3}', None),
]


def test_the_sdk_fed_by_aio_pika(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    # pamqp encodes a bytearray, not bytes, as an AMQP byte array.
    headers = {**HEADERS, "raw": bytearray(HEADERS["raw"])}

    def send(exchange: str, outgoing: list[Outgoing]) -> None:
        async def publish() -> None:
            async with await aio_pika.connect(amqp_url) as conn:
                channel = await conn.channel(publisher_confirms=True)
                target = await channel.get_exchange(exchange, ensure=True)
                for o in outgoing:
                    message = aio_pika.Message(
                        o.body,
                        message_id=o.message_id,
                        content_type=o.content_type,
                        headers=headers if o.message_id == "typed-1" else None,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    )
                    await target.publish(message, routing_key="k")

        asyncio.run(publish())

    # aio-pika's default: no content_type; the body reaches the handler as bytes.
    untyped = Outgoing(b'{"n": 4}', "untyped-1", content_type=None)
    handled, parking = feed_the_sdk(
        database_url, schema, amqp_url, broker, send, [*THREE, untyped], parked=0
    )
    assert parking == []
    by_body = {h.body if isinstance(h.body, bytes) else json.dumps(h.body): h for h in handled}
    assert len(handled) == 4  # the second dup-1 was absorbed by the inbox
    assert by_body[b'{"n": 4}'].content_type is None  # bytes, not decoded
    assert by_body['{"n": 1}'].message_id == "dup-1"
    assert_headers(by_body['{"n": 2}'].headers)
    # aio-pika (aiormq) cannot send a message without message_id: it sets a random one,
    # so the message is handled, and a copy the producer sends again is not a duplicate.
    generated = by_body['{"n": 3}'].message_id
    assert generated is not None
    assert re.fullmatch("[0-9a-f]{32}", generated)


def test_the_sdk_fed_by_kombu(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    def send(exchange: str, outgoing: list[Outgoing]) -> None:
        with kombu.Connection(amqp_url) as conn:
            producer = conn.Producer()
            for o in outgoing:
                extra = {} if o.message_id is None else {"message_id": o.message_id}
                producer.publish(
                    o.body,
                    exchange=exchange,
                    routing_key="k",
                    content_type=o.content_type,
                    content_encoding="utf-8",
                    headers=HEADERS if o.message_id == "typed-1" else None,
                    delivery_mode=2,
                    **extra,
                )

    handled, parking = feed_the_sdk(database_url, schema, amqp_url, broker, send, THREE, parked=1)
    assert_fed(handled, parking)


def test_kombu_headers_stay_intact_after_a_retry_and_in_the_parking_lot(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    lenient_frames.install_field_codec()  # read the parked copy as the SDK does
    exchange = broker.exchange()
    queue = broker.name("failing")
    app = ConsumerApp(
        name=f"interop-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
    )
    seen: list[dict[str, Any]] = []

    @app.handler(exchange=exchange, queue=queue, bindings=["#"], max_attempts=2, retry_delays=[0.2])
    def on_message(message: ConsumerMessage, _tx: psycopg.Connection[Any]) -> None:
        seen.append(dict(message.headers))
        raise ValueError("always")

    with running_consumer(app, broker):
        with kombu.Connection(amqp_url) as conn:
            conn.Producer().publish(
                b"{}",
                exchange=exchange,
                routing_key="k",
                content_type="application/json",
                content_encoding="utf-8",
                message_id="kombu-1",
                headers=HEADERS,
            )
        [parked] = broker.drain(f"{queue}.parking", expect=1, timeout_s=WAIT_S)

    assert len(seen) == 2  # the first attempt and the retry
    for headers in seen:
        assert_headers(headers)
    assert_headers(parked.properties.headers)
