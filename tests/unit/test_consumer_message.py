"""Decoding deliveries into messages."""

from __future__ import annotations

from typing import Any

import pytest

from outbox_relay.consumer.errors import UndecodableMessageError
from outbox_relay.consumer.message import Delivery, decode, is_json


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
