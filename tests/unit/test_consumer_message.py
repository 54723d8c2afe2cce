"""Decoding deliveries into messages."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pika.spec import Basic, BasicProperties

from outbox_relay.consumer import ConsumerApp, Message, settle
from outbox_relay.consumer.errors import UndecodableMessageError
from outbox_relay.consumer.message import (
    MAX_ATTEMPT_COUNT,
    Delivery,
    attempts_made,
    decode,
    is_json,
)
from tests.support.properties import HANDLER_PROPERTIES


def delivery(body: bytes, content_type: str | None = "application/json", **kw: Any) -> Delivery:
    fields: dict[str, Any] = {
        "exchange": "orders",
        "routing_key": "order.paid",
        "redelivered": False,
        "message_id": "m-1",
        "headers": {},
        "timestamp": None,
        "queue": "billing",
    }
    fields.update(kw)
    return Delivery(body=body, content_type=content_type, **fields)


class TestDecode:
    def test_json_by_content_type(self) -> None:
        assert decode(delivery(b'{"a": [1, 2]}')).body == {"a": [1, 2]}
        assert decode(delivery(b"[1]", "application/vnd.acme+json; charset=utf-8")).body == [1]

    def test_bytes_otherwise(self) -> None:
        assert decode(delivery(b"\xff\x00", "application/octet-stream")).body == b"\xff\x00"
        assert decode(delivery(b"{}", None)).body == b"{}"

    @pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b""])
    def test_a_json_body_that_does_not_parse_is_undecodable(self, body: bytes) -> None:
        with pytest.raises(UndecodableMessageError, match="not valid JSON"):
            decode(delivery(body))

    def test_a_missing_message_id_is_undecodable_only_when_the_inbox_needs_it(self) -> None:
        assert decode(delivery(b"1", message_id=None)).message_id is None
        with pytest.raises(UndecodableMessageError, match="no message_id"):
            decode(delivery(b"1", message_id=None), require_message_id=True)

    def test_a_retried_message_reports_where_it_was_first_published(self) -> None:
        retried = delivery(
            b"{}",
            exchange="",
            routing_key="billing",
            redelivered=True,
            headers={
                "outbox-attempt": 2,
                "outbox-original-routing-key": "order.paid",
                "outbox-original-exchange": b"orders",
            },
        )
        message = decode(retried)
        assert (message.exchange, message.routing_key) == ("orders", "order.paid")
        assert message.attempt == 3
        assert message.redelivered

    @pytest.mark.parametrize("value", ["x", None, -4, b"2"])
    def test_a_garbled_attempt_header_counts_as_none_made(self, value: object) -> None:
        expected = 3 if value == b"2" else 1
        assert decode(delivery(b"{}", headers={"outbox-attempt": value})).attempt == expected

    def test_timestamp_is_utc(self) -> None:
        message = decode(delivery(b"{}", timestamp=1_700_000_000))
        assert message.timestamp is not None
        assert message.timestamp.isoformat() == "2023-11-14T22:13:20+00:00"


def test_is_json() -> None:
    assert is_json("application/json")
    assert is_json("Application/JSON; charset=utf-8")
    assert is_json("application/problem+json")
    assert not is_json("text/plain")
    assert not is_json(None)


def received(**kw: Any) -> Delivery:
    fields: dict[str, Any] = {
        "body": b"{}",
        "exchange": "orders",
        "routing_key": "order.paid",
        "redelivered": False,
        "queue": "billing",
        "message_id": "m-1",
        "content_type": "application/json",
        "headers": {"a": 1},
        "timestamp": 1_700_000_000,
    }
    fields.update(kw)
    return Delivery.received(**fields)


class TestWhatPikaDecoded:
    """Short strings that are not UTF-8 arrive from pika as bytes, timestamps as any
    64-bit count: none of it may stop a worker; what a handler cannot take is parked."""

    def test_text_properties_arrive_as_text(self) -> None:
        message = decode(received())
        assert (message.message_id, message.content_type, message.body) == (
            "m-1",
            "application/json",
            {},
        )
        assert message.headers == {"a": 1}

    @pytest.mark.parametrize("name", ["message_id", "content_type"])
    def test_a_text_property_that_is_not_utf8_parks_the_message(self, name: str) -> None:
        delivery = received(**{name: b"\xff\xfe"})
        assert getattr(delivery, name) == "\ufffd\ufffd"
        with pytest.raises(UndecodableMessageError, match=f"the {name} property is not valid"):
            decode(delivery)

    def test_properties_pika_could_not_decode_park_the_message_with_the_reason(self) -> None:
        delivery = received(headers=None, undecodable="pika cannot decode", raw_properties=b"\x01")
        assert delivery.headers == {}
        assert delivery.raw_properties == b"\x01"
        with pytest.raises(UndecodableMessageError, match="pika cannot decode"):
            decode(delivery, require_message_id=True)

    def test_routing_key_and_exchange_that_are_not_utf8_are_shown_as_text(self) -> None:
        message = decode(received(exchange=b"ex\xff", routing_key=b"k\xff"))
        assert (message.exchange, message.routing_key) == ("ex\ufffd", "k\ufffd")

    @pytest.mark.parametrize("seconds", [253_402_300_800, 2**40, 2**62, 2**64 - 1])
    def test_a_timestamp_past_year_9999_parks_the_message(self, seconds: int) -> None:
        with pytest.raises(UndecodableMessageError, match=f"timestamp property {seconds}"):
            decode(received(timestamp=seconds))

    def test_the_last_second_of_year_9999_is_a_time(self) -> None:
        message = decode(received(timestamp=253_402_300_799))
        assert message.timestamp is not None
        assert message.timestamp.year == 9999

    def test_a_json_body_nested_past_the_recursion_limit_parks_the_message(self) -> None:
        with pytest.raises(UndecodableMessageError, match="not valid JSON"):
            decode(received(body=b"[" * 100_000 + b"]" * 100_000))

    @pytest.mark.parametrize(
        ("value", "made"),
        [(2**63 - 1, MAX_ATTEMPT_COUNT), (10**40, MAX_ATTEMPT_COUNT), (Decimal("Infinity"), 0)],
    )
    def test_an_attempt_count_past_32_bits_is_capped(self, value: object, made: int) -> None:
        assert attempts_made({"outbox-attempt": value}) == made
        assert decode(received(headers={"outbox-attempt": value})).attempt == made + 1
        assert made + 1 < 2**31  # a handler can store it in an integer column


PROPERTIES = HANDLER_PROPERTIES


class TestProperties:
    """The basic properties a handler reads, e.g. to answer ``reply_to`` with the
    ``correlation_id``."""

    def test_every_property_reaches_the_message_as_sent(self) -> None:
        message = decode(received(**PROPERTIES))
        assert {name: getattr(message, name) for name in PROPERTIES} == PROPERTIES

    def test_absent_properties_are_none(self) -> None:
        message = decode(received())
        assert [getattr(message, name) for name in PROPERTIES] == [None] * len(PROPERTIES)

    def test_from_what_pika_decoded_at_the_runner(self) -> None:
        app = ConsumerApp(name="rpc")

        @app.handler(exchange="rpc", queue="rpc.requests")
        def answer(message: Message) -> None: ...

        method = Basic.Deliver(delivery_tag=1, exchange="rpc", routing_key="ask")
        properties = BasicProperties(message_id="m-1", timestamp=1, **PROPERTIES)
        job = settle.received(answer, 1, method, properties, b"{}")
        message = decode(job.delivery)
        assert {name: getattr(message, name) for name in PROPERTIES} == PROPERTIES

    @pytest.mark.parametrize("name", [n for n in PROPERTIES if n != "priority"])
    def test_text_that_is_not_utf8_is_shown_and_does_not_park(self, name: str) -> None:
        message = decode(received(**{name: b"r\xff"}), require_message_id=True)
        assert getattr(message, name) == "r\ufffd"

    @pytest.mark.parametrize("value", [-1, 256, True, "9", 1.5])
    def test_a_priority_that_is_not_an_octet_is_none(self, value: object) -> None:
        assert decode(received(priority=value)).priority is None
