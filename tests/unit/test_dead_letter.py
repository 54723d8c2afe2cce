"""Reading a parked message's headers back, and which messages a dead-letters action picks."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pytest

from outbox_relay.consumer.dead_letter import (
    DeadLetter,
    DeadLetterFilter,
    dead_letter,
    parking_lot_for,
    replay_headers,
    replay_target,
)
from outbox_relay.consumer.failure import ErrorInfo, failure_headers

PUBLISHED = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def declined() -> None:
    raise ValueError("card declined")


def parked(**headers: object) -> dict[str, object]:
    try:
        declined()
    except ValueError as exc:
        error = ErrorInfo.from_exception(exc)
    return failure_headers(
        {"traceparent": "00-abc-def-01", **headers},
        attempt=5,
        error=error,
        failed_queue="billing.orders",
        routing_key="order.created",
        exchange="orders",
    )


def letter_of(headers: dict[str, object], *, body: bytes = b'{"n": 1}') -> DeadLetter:
    return dead_letter(
        body=body,
        routing_key="billing.orders.parking",
        exchange="",
        message_id="m-1",
        content_type="application/json",
        timestamp=int(PUBLISHED.timestamp()),
        headers=headers,
    )


class TestDeadLetter:
    def test_the_failure_headers_the_consumer_writes_read_back(self) -> None:
        letter = letter_of(parked())
        now = PUBLISHED + dt.timedelta(minutes=5)
        assert letter.summary(now) == {
            "message_id": "m-1",
            "routing_key": "order.created",
            "exchange": "orders",
            "failed_queue": "billing.orders",
            "error_type": "ValueError",
            "error_message": "card declined",
            "attempts": 5,
            "age_s": 300.0,
        }
        details = letter.details(now)
        assert "Traceback (most recent call last)" in details["error_trace"]
        assert "ValueError: card declined" in details["error_trace"]
        assert details["headers"] == {"traceparent": "00-abc-def-01"}
        assert details["published_at"] == PUBLISHED.isoformat()
        assert "payload" not in details
        assert json.loads(letter.details(now, payload=True)["payload"]) == {"n": 1}
        json.dumps(details)  # printable as is

    def test_bytes_headers_are_decoded(self) -> None:
        headers = {k: v.encode() if isinstance(v, str) else v for k, v in parked().items()}
        letter = letter_of({**headers, "x-extra": [b"a", {"k": b"v"}]})
        assert letter.error_type == "ValueError"
        assert letter.failed_queue == "billing.orders"
        assert letter.details(PUBLISHED)["headers"]["x-extra"] == ["a", {"k": "v"}]

    def test_a_message_parked_without_our_headers_still_lists(self) -> None:
        letter = dead_letter(
            body=b"x",
            routing_key="billing.orders.parking",
            exchange="",
            message_id=None,
            content_type=None,
            timestamp=None,
            headers=None,
        )
        assert letter.routing_key == "billing.orders.parking"
        assert letter.failed_queue is None
        assert letter.attempts == 0
        assert letter.age_s(PUBLISHED) is None
        assert replay_target(letter, "billing.orders.parking") == "billing.orders"

    def test_what_the_consumer_parks_for_undecodable_properties_reads_back(self) -> None:
        """Odd values reach the parking lot as they were (pika decodes them so): none of
        them stops a listing, and the raw properties are shown, the trace is not lost."""
        headers = parked(
            **{"outbox-raw-properties": "AAE=", "outbox-raw-properties-size": 2},
            big=10**30,
            when=dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc),
            amount=decimal.Decimal("2.147483647E-246"),
        )
        letter = dead_letter(
            body=b"{}",
            routing_key="billing.orders.parking",
            exchange="",
            message_id=b"\xffid",  # a short string that is not UTF-8 arrives as bytes
            content_type=b"\xff/json",
            timestamp=2**64 - 1,  # past year 9999
            headers={**headers, b"\xfe": b"\xff"},
        )
        details = letter.details(PUBLISHED, payload=True)
        json.dumps(details)
        json.dumps(letter.summary(PUBLISHED))
        assert letter.message_id == "\ufffdid"
        assert letter.content_type == "\ufffd/json"
        assert letter.published_at is None
        assert details["raw_properties"] == "AAE="
        assert details["raw_properties_size"] == 2
        assert "outbox-raw-properties" not in details["headers"]
        assert details["headers"]["big"] == str(10**30)  # past 64 bits: parked as text
        assert (
            replay_headers(headers)
            .keys()
            .isdisjoint({"outbox-raw-properties", "outbox-raw-properties-size"})
        )


class TestFilter:
    @pytest.mark.parametrize(
        ("where", "picked"),
        [
            (DeadLetterFilter(), True),
            (DeadLetterFilter(message_ids=frozenset({"m-1", "m-2"})), True),
            (DeadLetterFilter(message_ids=frozenset({"m-2"})), False),
            (DeadLetterFilter(error_type="ValueError"), True),
            (DeadLetterFilter(error_type="Value"), False),
            (DeadLetterFilter(routing_key="order.created"), True),
            (DeadLetterFilter(routing_key="order.*"), False),
            (DeadLetterFilter(error_type="ValueError", routing_key="other"), False),
        ],
    )
    def test_matches(self, where: DeadLetterFilter, picked: bool) -> None:
        assert where.matches(letter_of(parked())) is picked

    def test_error_type_matches_the_class_name_of_a_qualified_type(self) -> None:
        letter = letter_of({**parked(), "outbox-error-type": "billing.errors.CardDeclined"})
        assert DeadLetterFilter(error_type="CardDeclined").matches(letter)
        assert DeadLetterFilter(error_type="billing.errors.CardDeclined").matches(letter)
        assert not DeadLetterFilter(error_type="errors.Declined").matches(letter)

    def test_describe(self) -> None:
        assert DeadLetterFilter().describe() == "all messages"
        where = DeadLetterFilter(message_ids=frozenset({"b", "a"}), error_type="E")
        assert where.describe() == "messages with message ids a, b and error type 'E'"


def test_replayed_headers_start_over_but_keep_where_the_message_began() -> None:
    headers = replay_headers({**parked(), "x-death": [{"count": 1}]})
    assert headers == {
        "traceparent": "00-abc-def-01",
        "outbox-original-routing-key": "order.created",
        "outbox-original-exchange": "orders",
    }


@pytest.mark.parametrize(
    ("given", "lot"),
    [
        ("billing.orders", "billing.orders.parking"),
        ("billing.orders.parking", "billing.orders.parking"),
    ],
)
def test_parking_lot_for(given: str, lot: str) -> None:
    assert parking_lot_for(given) == lot
