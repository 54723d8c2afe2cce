"""Validation and encoding of producer input: every bad argument is refused with a fix."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay import header_types
from outbox_relay.encoding import delay_seconds, encode_headers, encode_payload, new_message
from outbox_relay.errors import InvalidMessageError
from outbox_relay.message import (
    BROKER_MAX_MESSAGE_BYTES,
    DEFAULT_LIMITS,
    HEADERS_BYTES_CEILING,
    MAX_DELAY_S,
    MAX_PAYLOAD_BYTES,
    Limits,
    OutboxMessage,
    OutboxRow,
    UnreadableHeaders,
    amqp_problem,
)


def _nested_list(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


def build(**overrides: object):  # type: ignore[no-untyped-def]
    arguments: dict[str, object] = {
        "exchange": "orders",
        "routing_key": "order.created",
        "payload": {"id": 1},
    }
    arguments.update(overrides)
    limits = arguments.pop("limits", DEFAULT_LIMITS)
    return new_message(OutboxMessage(**arguments), limits)  # type: ignore[arg-type]


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
        ids = [uuid.UUID(build().message_id) for _ in range(200)]
        assert len(set(ids)) == 200
        assert all(i.version == 7 for i in ids)
        assert [i.bytes[:6] for i in ids] == sorted(i.bytes[:6] for i in ids)

    def test_a_given_message_id_is_kept(self) -> None:
        given_id = uuid.uuid4()
        assert build(message_id=given_id).message_id == str(given_id)
        assert build(message_id=str(given_id)).message_id == str(given_id)
        # Any text AMQP carries, kept as given.
        for text in ("order-42-created", "01HZY3K8Q9ZJ8Y6V2R5W1T3M4N", "É" * 127, "x" * 255):
            assert build(message_id=text).message_id == text
        assert build(message_id=str(given_id).upper()).message_id == str(given_id).upper()

    @pytest.mark.parametrize(
        ("overrides", "names"),
        [
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
            ({"message_id": ""}, "message_id"),
            ({"message_id": "x" * 256}, "message_id"),
            ({"message_id": "é" * 128}, "message_id"),
            ({"message_id": "a\x00b"}, "message_id"),
            ({"message_id": b"bytes"}, "message_id"),
            ({"message_id": 12}, "message_id"),
            ({"partition_key": ""}, "partition_key"),
            ({"partition_key": 7}, "partition_key"),
            # PostgreSQL's text and jsonb cannot store NUL: refused before any statement.
            ({"exchange": "ex\x00"}, "exchange"),
            ({"routing_key": "a\x00b"}, "routing_key"),
            ({"partition_key": "\x00"}, "partition_key"),
            ({"payload": b"x", "content_type": "text/plain\x00"}, "content_type"),
            ({"headers": {"a\x00": 1}}, "headers"),
            ({"headers": {"a": "b\x00"}}, "headers"),
            ({"headers": {"a": {"b": ["c", "\x00"]}}}, "headers"),
            # Lone surrogates are not Unicode text.
            ({"exchange": "ex\ud800"}, "exchange"),
            ({"routing_key": "\udfff"}, "routing_key"),
            ({"partition_key": "k\ud800"}, "partition_key"),
            ({"payload": b"x", "content_type": "text/\ud800"}, "content_type"),
            ({"headers": {"\ud800": 1}}, "headers"),
            ({"headers": {"a": "\ud800"}}, "headers"),
            ({"payload": {"a": "\ud800"}}, "payload"),
            ({"payload": "\ud800"}, "payload"),
            # Nesting: AMQP tables to MAX_HEADER_DEPTH; payloads as deep as json can go (how
            # deep depends on the Python version; 100,000 levels is past it on every one).
            (
                {
                    "headers": {
                        "a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
                    }
                },
                "headers",
            ),
            ({"payload": _nested_list(100_000)}, "payload"),
            ({"headers": {"a": _nested_list(5000)}}, "headers"),
            # The AMQP-encoded size, not the JSON size: 60 KB of JSON, 150 KB of AMQP.
            ({"headers": {"h": [0] * 30000}}, "headers"),
            ({"headers": {"f": math.nan}}, "headers"),
            ({"delay": 1e13}, "delay"),
            ({"delay": 1e300}, "delay"),
            ({"delay": 10**400}, "delay"),
            ({"delay": math.nan}, "delay"),
            ({"delay": MAX_DELAY_S + 1}, "delay"),
            ({"delay": dt.timedelta.max}, "delay"),
            ({"content_type": 5, "payload": b"x"}, "content_type"),
            ({"content_type": "", "payload": b"x"}, "content_type"),
            ({"message_id": "x" * 100_000}, "message_id"),
            ({"message_id": "\ud800"}, "message_id"),
            ({"message_id": b"0" * 16}, "message_id"),
            ({"payload": 10**5000}, "payload"),
            ({"limits": {"max_payload_bytes": 10}}, "limits"),
        ],
    )
    def test_bad_input_names_the_argument(self, overrides: dict[str, object], names: str) -> None:
        with pytest.raises(InvalidMessageError) as info:
            build(**overrides)
        assert str(info.value).startswith(names), str(info.value)
        assert isinstance(info.value, ValueError)
        assert len(str(info.value)) < 500, "the error quotes the value whole"
        str(info.value).encode("utf-8")

    def test_limits_can_be_raised_and_lowered(self) -> None:
        big = b"x" * (MAX_PAYLOAD_BYTES + 1)
        assert build(payload=big, limits=Limits(max_payload_bytes=len(big))).payload == big
        tight = Limits(max_payload_bytes=10, max_header_count=1, max_headers_bytes=20)
        for overrides, names, limit in (
            ({"payload": b"x" * 11}, "payload", "Limits.max_payload_bytes"),
            ({"headers": {"a": 1, "b": 2}}, "headers", "Limits.max_header_count"),
            ({"headers": {"a": "y" * 30}}, "headers", "Limits.max_headers_bytes"),
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
            {"max_headers_bytes": 1.5},
            {"max_payload_bytes": True},
            {"max_payload_bytes": BROKER_MAX_MESSAGE_BYTES + 1},
            {"max_headers_bytes": HEADERS_BYTES_CEILING + 1},
        ],
    )
    def test_limits_refuse_values_that_make_no_sense(self, arguments: dict[str, object]) -> None:
        with pytest.raises(ValueError, match=f"Limits.{next(iter(arguments))}"):
            Limits(**arguments)  # type: ignore[arg-type]

    def test_delay_accepts_seconds_and_timedeltas(self) -> None:
        assert build(delay=dt.timedelta(minutes=1)).delay_s == 60.0
        assert build(delay=2).delay_s == 2.0
        assert build().delay_s == 0.0
        assert build(delay=dt.timedelta(days=365)).delay_s == MAX_DELAY_S

    def test_headers_may_be_any_mapping_and_any_sequence(self) -> None:
        from types import MappingProxyType

        headers = MappingProxyType({"a": (1, 2), "t": MappingProxyType({"b": "c"})})
        assert json.loads(build(headers=headers).headers_json) == {"a": [1, 2], "t": {"b": "c"}}

    def test_headers_up_to_the_ceiling_are_accepted_when_the_limit_is_raised(self) -> None:
        limits = Limits(max_headers_bytes=HEADERS_BYTES_CEILING)
        pad = HEADERS_BYTES_CEILING - (4 + 1 + 1 + 5)
        assert build(headers={"h": "x" * pad}, limits=limits).headers_json
        with pytest.raises(InvalidMessageError, match=r"Limits\.max_headers_bytes"):
            build(headers={"h": "x" * (pad + 1)}, limits=limits)


# Text PostgreSQL's text and jsonb store: no NUL, no lone surrogates.
_PG_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def typed(value: object) -> object:
    """``value`` with the type of every leaf beside it: 1.0 and 1 differ."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed(item) for item in value]
    return (type(value), value)


class TestHeaders:
    @given(
        st.dictionaries(
            # AMQP header names are at most 255 bytes: 60 characters of up to 4 bytes
            st.text(_PG_TEXT, min_size=1, max_size=60).filter(
                lambda k: not k.lower().startswith("outbox-")
            ),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(2**63), 2**63 - 1)
                | st.text(_PG_TEXT)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.decimals(
                    allow_nan=False,
                    allow_infinity=False,
                    places=2,
                    min_value=-(10**6),
                    max_value=10**6,
                )
                | st.datetimes(dt.datetime(1970, 1, 1), timezones=st.just(dt.timezone.utc)).map(
                    lambda moment: moment.replace(microsecond=0)
                )
                | st.binary(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    # A table of one typed value's key is refused (see header_types)
                    | st.dictionaries(
                        st.text(_PG_TEXT, max_size=60).filter(lambda k: k not in header_types.TAGS),
                        inner,
                        max_size=3,
                    )
                ),
                max_leaves=10,
            ),
            max_size=10,
        )
    )
    def test_valid_headers_round_trip_through_json_with_their_types(
        self, headers: dict[str, object]
    ) -> None:
        loaded = header_types.from_json(json.loads(encode_headers(headers)))
        assert typed(loaded) == typed(headers)

    def test_no_headers_is_an_empty_object(self) -> None:
        assert encode_headers(None) == "{}"


class TestAmqpProblem:
    """Rows written past ``publish`` (by SQL): what makes them unpublishable, by name."""

    @staticmethod
    def row(
        headers: object, content_type: str = "application/json", exchange: str = "ex"
    ) -> OutboxRow:
        return OutboxRow(
            id=1,
            message_id=str(uuid.uuid4()),
            exchange=exchange,
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

    @pytest.mark.parametrize(
        ("exchange", "names"),
        [("E" * 300, "exchange is 300 bytes"), ("é" * 128, "exchange is 256 bytes")],
    )
    def test_names_an_exchange_amqp_cannot_carry(self, exchange: str, names: str) -> None:
        assert names in (amqp_problem(self.row({}, exchange=exchange)) or "")

    def test_properties_over_the_connections_frame_max_are_named(self) -> None:
        row = self.row({"h": [0] * 30000})
        problem = amqp_problem(row) or ""
        assert "frame_max of 131072" in problem
        assert problem.startswith("headers:")
        assert amqp_problem(row, frame_max=1024 * 1024) is None
        assert amqp_problem(row, frame_max=0) is None, "0: the broker sets no limit"
        assert "frame_max of 4096" in (
            amqp_problem(self.row({"h": "x" * 4100}), frame_max=4096) or ""
        )

    def test_headers_nested_too_deep_or_unreadable_are_named(self) -> None:
        deep: dict[str, object] = {"leaf": 1}
        for _ in range(40):
            deep = {"t": deep}
        assert "nested too deep" in (amqp_problem(self.row(deep)) or "")
        unreadable = UnreadableHeaders("nested too deep to be read")
        assert amqp_problem(self.row(unreadable)) == "headers: nested too deep to be read"

    def test_json_values_amqp_carries_are_fine(self) -> None:
        headers = {"f": 0.5, "mix": [1, "a", True, None, 2.5, {"x": 1}], "i": 2**63 - 1}
        assert amqp_problem(self.row(headers)) is None


class TestEncoding:
    @given(st.binary(max_size=256))
    def test_bytes_are_never_altered(self, body: bytes) -> None:
        assert encode_payload(body, None) == (body, "application/octet-stream")

    @given(st.floats(min_value=0, max_value=MAX_DELAY_S))
    def test_any_delay_up_to_a_year_is_kept(self, seconds: float) -> None:
        assert delay_seconds(seconds) == seconds
