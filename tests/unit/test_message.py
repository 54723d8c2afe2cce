"""Validation and encoding of producer input: every bad argument is refused with a fix."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.errors import InvalidMessageError
from outbox_relay.message import (
    BROKER_MAX_MESSAGE_BYTES,
    MAX_PAYLOAD_BYTES,
    Limits,
    OutboxRow,
    amqp_problem,
    delay_seconds,
    encode_headers,
    encode_payload,
    new_message,
)


def build(**overrides: object):  # type: ignore[no-untyped-def]
    arguments: dict[str, object] = {
        "exchange": "orders",
        "routing_key": "order.created",
        "payload": {"id": 1},
    }
    arguments.update(overrides)
    return new_message(**arguments)  # type: ignore[arg-type]


class TestNewMessage:
    def test_json_payload_is_encoded_compactly_with_its_content_type(self) -> None:
        message = build(payload={"id": 1, "name": "café"})
        assert message.payload == '{"id":1,"name":"café"}'.encode()
        assert message.content_type == "application/json"

    def test_bytes_pass_through_with_the_given_content_type(self) -> None:
        message = build(payload=b"\x00\xff", content_type="application/x-protobuf")
        assert message.payload == b"\x00\xff"
        assert message.content_type == "application/x-protobuf"

    def test_message_ids_are_generated_time_ordered_and_unique(self) -> None:
        ids = [build().message_id for _ in range(200)]
        assert len(set(ids)) == 200
        assert all(i.version == 7 for i in ids)
        assert [i.bytes[:6] for i in ids] == sorted(i.bytes[:6] for i in ids)

    def test_a_given_message_id_is_kept(self) -> None:
        given_id = uuid.uuid4()
        assert build(message_id=given_id).message_id == given_id
        assert build(message_id=str(given_id)).message_id == given_id

    @pytest.mark.parametrize(
        ("overrides", "names"),
        [
            ({"exchange": ""}, "exchange"),
            ({"exchange": 5}, "exchange"),
            ({"routing_key": "k" * 256}, "routing_key"),
            ({"routing_key": "é" * 128}, "routing_key"),
            ({"payload": {"when": dt.datetime.now(tz=dt.timezone.utc)}}, "payload"),
            ({"payload": math.nan}, "payload"),
            ({"payload": {"a": 1}, "content_type": "text/plain"}, "payload"),
            ({"payload": b"x" * (MAX_PAYLOAD_BYTES + 1)}, "payload"),
            ({"headers": ["a"]}, "headers"),
            ({"headers": {1: "a"}}, "headers"),
            ({"headers": {"a": object()}}, "headers"),
            ({"headers": {"a": {"b": b"bytes"}}}, "headers"),
            ({"headers": {"a": 2**64}}, "headers"),
            ({"headers": {"a": math.inf}}, "headers"),
            ({"headers": {"outbox-attempt": 1}}, "headers"),
            ({"headers": {f"h{i}": i for i in range(101)}}, "headers"),
            ({"headers": {"h" * 256: 1}}, "headers"),
            ({"headers": {"a": {"é" * 128: 1}}}, "headers"),
            ({"payload": b"x", "content_type": "x/" + "é" * 127}, "content_type"),
            ({"delay": -1}, "delay"),
            ({"delay": math.inf}, "delay"),
            ({"delay": "5"}, "delay"),
            ({"delay": dt.timedelta(seconds=-1)}, "delay"),
            ({"message_id": "not-a-uuid"}, "message_id"),
            ({"message_id": 12}, "message_id"),
            ({"partition_key": ""}, "partition_key"),
            ({"partition_key": 7}, "partition_key"),
        ],
    )
    def test_bad_input_names_the_argument(self, overrides: dict[str, object], names: str) -> None:
        with pytest.raises(InvalidMessageError) as info:
            build(**overrides)
        assert str(info.value).startswith(names), str(info.value)
        assert isinstance(info.value, ValueError)

    def test_limits_can_be_raised_and_lowered(self) -> None:
        big = b"x" * (MAX_PAYLOAD_BYTES + 1)
        assert build(payload=big, limits=Limits(max_payload_bytes=len(big))).payload == big
        tight = Limits(max_payload_bytes=10, max_header_count=1, max_headers_json_bytes=20)
        for overrides, names, limit in (
            ({"payload": b"x" * 11}, "payload", "Limits.max_payload_bytes"),
            ({"headers": {"a": 1, "b": 2}}, "headers", "Limits.max_header_count"),
            ({"headers": {"a": "y" * 30}}, "headers", "Limits.max_headers_json_bytes"),
        ):
            with pytest.raises(InvalidMessageError) as info:
                build(limits=tight, **overrides)
            assert str(info.value).startswith(names)
            assert limit in str(info.value)

    @pytest.mark.parametrize(
        "arguments",
        [
            {"max_payload_bytes": 0},
            {"max_header_count": -1},
            {"max_headers_json_bytes": 1.5},
            {"max_payload_bytes": True},
            {"max_payload_bytes": BROKER_MAX_MESSAGE_BYTES + 1},
        ],
    )
    def test_limits_refuse_values_that_make_no_sense(self, arguments: dict[str, object]) -> None:
        with pytest.raises(ValueError, match=f"Limits.{next(iter(arguments))}"):
            Limits(**arguments)  # type: ignore[arg-type]

    def test_delay_accepts_seconds_and_timedeltas(self) -> None:
        assert build(delay=dt.timedelta(minutes=1)).delay_s == 60.0
        assert build(delay=2).delay_s == 2.0
        assert build().delay_s == 0.0


class TestHeaders:
    @given(
        st.dictionaries(
            # AMQP header names are at most 255 bytes: 60 characters of up to 4 bytes
            st.text(min_size=1, max_size=60).filter(lambda k: not k.lower().startswith("outbox-")),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(2**63), 2**63 - 1)
                | st.text()
                | st.floats(allow_nan=False, allow_infinity=False),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=60), inner, max_size=3)
                ),
                max_leaves=10,
            ),
            max_size=10,
        )
    )
    def test_valid_headers_round_trip_through_json(self, headers: dict[str, object]) -> None:
        assert json.loads(encode_headers(headers)) == headers

    def test_no_headers_is_an_empty_object(self) -> None:
        assert encode_headers(None) == "{}"


class TestAmqpProblem:
    """Rows written past ``publish`` (by SQL): what makes them unpublishable, by name."""

    @staticmethod
    def row(headers: object, content_type: str = "application/json") -> OutboxRow:
        return OutboxRow(
            id=1,
            message_id=uuid.uuid4(),
            exchange="ex",
            routing_key="rk",
            payload=b"{}",
            content_type=content_type,
            headers=headers,  # type: ignore[arg-type]
            partition_key=None,
            created_at=dt.datetime.now(tz=dt.timezone.utc),
        )

    @pytest.mark.parametrize(
        ("headers", "content_type", "names"),
        [
            ({"big": 2**70}, "application/json", "'big'"),
            ({"list": [1, -(2**64)]}, "application/json", "'list[1]'"),
            ({"t": {"inner": 2**63}}, "application/json", "'t.inner'"),
            ({"n" * 300: 1}, "application/json", "300 bytes"),
            ("text", "application/json", "JSON object"),
            ([1, 2], "application/json", "JSON object"),
            ({}, "x/" + "y" * 300, "content_type"),
        ],
    )
    def test_names_what_cannot_be_encoded(
        self, headers: object, content_type: str, names: str
    ) -> None:
        problem = amqp_problem(self.row(headers, content_type))
        assert problem is not None
        assert names in problem

    def test_json_values_amqp_carries_are_fine(self) -> None:
        headers = {"f": 0.5, "mix": [1, "a", True, None, 2.5, {"x": 1}], "i": 2**63 - 1}
        assert amqp_problem(self.row(headers)) is None


class TestEncoding:
    @given(st.binary(max_size=256))
    def test_bytes_are_never_altered(self, body: bytes) -> None:
        assert encode_payload(body, None) == (body, "application/octet-stream")

    @given(st.floats(min_value=0, allow_infinity=False, allow_nan=False))
    def test_any_non_negative_finite_delay_is_kept(self, seconds: float) -> None:
        assert delay_seconds(seconds) == seconds
