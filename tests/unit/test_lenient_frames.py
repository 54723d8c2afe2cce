"""The fence around pika's frame decoding: what it turns into parked-to-be deliveries, what
it leaves to pika, and the pika internals it relies on (these tests fail when pika moves).
"""

from __future__ import annotations

import inspect
import math
import re
import struct
from types import SimpleNamespace
from typing import Any

import pika
import pika.connection
import pika.data
import pika.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika import frame, spec

from outbox_relay.consumer import lenient_frames
from outbox_relay.consumer.failure import ErrorInfo, failure_headers
from outbox_relay.consumer.lenient_frames import (
    PIKA_VERSION,
    UndecodedProperties,
    decode_frame,
    undecodable,
)
from tests.support import raw_amqp as amqp

CHANNEL = 3
BODY_SIZE = 17


def header_frame(properties: bytes, *, class_id: int = 60) -> bytes:
    """A whole content-header frame around ``properties`` (flags and list)."""
    payload = struct.pack(">HHQ", class_id, 0, BODY_SIZE) + properties
    return struct.pack(">BHI", spec.FRAME_HEADER, CHANNEL, len(payload)) + payload + b"\xce"


def raw(headers: bytes | None, **kw: Any) -> bytes:
    return amqp.RawMessage(
        message_id=b"m-1", headers=headers, timestamp=1_700_000_000, **kw
    ).properties_payload()


def one(value: bytes) -> bytes:
    return amqp.table_body((b"h", value))


# What datetime raises past time_t depends on the platform (Linux: OSError 75 or
# OverflowError; elsewhere a ValueError naming the year).
PAST_TIME_T = r"Value too large|out of range"
UNDECODABLE = {
    "year 10000": (one(amqp.timestamp(253_402_300_800)), "year 10000 is out of range"),
    "timestamp 2^62": (one(amqp.timestamp(2**62)), PAST_TIME_T),
    "timestamp max": (one(amqp.timestamp(2**64 - 1)), PAST_TIME_T),
    "NaN double": (one(amqp.double(math.nan)), "NaN"),
    "infinite double": (one(amqp.double(math.inf)), "infinity"),
    "infinite float": (one(amqp.single(-math.inf)), "infinity"),
    "unknown type z": (one(b"z"), "InvalidFieldTypeException"),
    "unknown type NUL": (one(b"\x00"), "InvalidFieldTypeException"),
    "arrays too deep": (one(amqp.nested_arrays(5_000)), "recursion"),
    "tables too deep": (one(amqp.nested_tables(5_000)), "recursion"),
    "value past its table": (
        struct.pack(">I", 10) + amqp.short(b"h") + b"S" + struct.pack(">I", 4096) + b"abc",
        "unpack_from requires a buffer",
    ),
    "bad value in array": (one(amqp.array(amqp.void(), amqp.timestamp(2**62))), PAST_TIME_T),
}


class TestPikaVersion:
    """The fence reads and replaces pika internals. When pika moves, check every item of
    lenient_frames.RELIES_ON against the new source (github.com/pika/pika), adapt the
    module, and only then change PIKA_VERSION."""

    def test_the_fence_was_written_for_the_installed_pika(self) -> None:
        assert pika.__version__ == PIKA_VERSION, (
            f"pika is {pika.__version__}, the fence in outbox_relay/consumer/"
            f"lenient_frames.py was written for {PIKA_VERSION}: review it (RELIES_ON)"
        )

    def test_connections_read_frames_through_read_frame(self) -> None:
        read = inspect.getsource(pika.connection.Connection._read_frame)
        assert "return frame.decode_frame(self._frame_buffer)" in read
        on_data = inspect.getsource(pika.connection.Connection._on_data_available)
        assert "self._read_frame()" in on_data
        assert "self._frame_buffer" in on_data
        assert "__slots__" not in vars(pika.connection.Connection)  # the instance takes it

    def test_decode_frame_header_and_properties_keep_their_signatures(self) -> None:
        assert list(inspect.signature(frame.decode_frame).parameters) == ["data_in"]
        assert list(inspect.signature(frame.Header).parameters) == [
            "channel_number",
            "body_size",
            "props",
        ]
        decode = inspect.signature(spec.BasicProperties.decode).parameters
        assert list(decode) == ["self", "encoded", "offset"]
        assert decode["offset"].default == 0
        assert "properties.decode(frame_data[12:])" in inspect.getsource(frame.decode_frame)

    def test_the_protocol_constants_the_fence_uses(self) -> None:
        assert spec.BasicProperties.INDEX == 60
        assert spec.BasicProperties.FLAG_CONTENT_TYPE == 1 << 15
        assert spec.BasicProperties.FLAG_CONTENT_ENCODING == 1 << 14
        assert spec.BasicProperties.FLAG_HEADERS == 1 << 13
        assert (spec.FRAME_HEADER, spec.FRAME_END, spec.FRAME_HEADER_SIZE) == (2, 206, 7)
        assert spec.FRAME_END_SIZE == 1

    def test_blocking_connections_keep_their_core_and_its_negotiated_frame_max(self) -> None:
        assert "self._impl = self._create_connection(" in inspect.getsource(
            pika.BlockingConnection.__init__
        )
        tune = inspect.getsource(pika.connection.Connection._on_connection_tune)
        assert "self.params.frame_max = " in tune


class TestDecodeFrame:
    @pytest.mark.parametrize("case", sorted(UNDECODABLE))
    def test_properties_pika_cannot_decode_become_an_undecoded_header(self, case: str) -> None:
        headers, error = UNDECODABLE[case]
        properties = raw(headers)
        data = header_frame(properties)
        with pytest.raises(Exception):  # noqa: B017, PT011 - pika raises all sorts
            frame.decode_frame(data)

        consumed, decoded = decode_frame(data + b"more frames")

        assert consumed == len(data)
        assert isinstance(decoded, frame.Header)
        assert (decoded.channel_number, decoded.body_size) == (CHANNEL, BODY_SIZE)
        found = undecodable(decoded.properties)
        assert found is not None
        assert found.raw == properties
        assert re.search(error, found.error), found.error
        assert found.salvaged
        assert decoded.properties.headers is None
        assert decoded.properties.message_id == "m-1"
        assert decoded.properties.content_type == "application/json"
        assert decoded.properties.timestamp == 1_700_000_000
        assert decoded.properties.delivery_mode == 2
        assert found.error in found.reason()

    def test_properties_cut_short_keep_nothing_but_their_bytes(self) -> None:
        properties = raw(amqp.table_body((b"h", amqp.long_string(b"abc"))))[:-12]
        _, decoded = decode_frame(header_frame(properties))
        assert isinstance(decoded, frame.Header)
        found = undecodable(decoded.properties)
        assert found is not None
        assert not found.salvaged
        assert found.raw == properties
        assert decoded.properties.message_id is None
        assert "no property could be read" in found.reason()

    @pytest.mark.parametrize(
        "headers",
        [
            None,
            amqp.table_body(),
            one(amqp.timestamp(253_402_300_799)),
            one(amqp.decimal(255, -(2**31))),
            one(amqp.long_string(b"\xff\xfe")),
            amqp.table_body((b"\xff", amqp.byte_array(b"\x00" * 1000))),
            one(amqp.nested_tables(100)),
        ],
    )
    def test_what_pika_decodes_is_left_to_pika(self, headers: bytes | None) -> None:
        data = header_frame(raw(headers))
        consumed, decoded = decode_frame(data)
        expected_consumed, expected = frame.decode_frame(data)
        assert consumed == expected_consumed
        assert isinstance(decoded, frame.Header)
        assert isinstance(expected, frame.Header)
        assert type(decoded.properties) is spec.BasicProperties
        assert undecodable(decoded.properties) is None
        assert decoded.properties.headers == expected.properties.headers

    def test_an_incomplete_frame_waits_for_more_bytes(self) -> None:
        data = header_frame(raw(one(amqp.timestamp(2**62))))
        assert decode_frame(data[:-1]) == (0, None)
        assert decode_frame(data[:5]) == (0, None)

    def test_errors_that_are_not_about_one_messages_properties_stay_pikas(self) -> None:
        broken_end = header_frame(raw(one(amqp.timestamp(2**62))))[:-1] + b"\x00"
        with pytest.raises(pika.exceptions.InvalidFrameError):
            decode_frame(broken_end)
        with pytest.raises(pika.exceptions.InvalidFrameError, match="Unknown frame type"):
            decode_frame(b"\x09\x00\x01\x00\x00\x00\x00\xce")
        with pytest.raises(KeyError):  # a class other than basic: pika's error, as before
            decode_frame(header_frame(raw(None), class_id=61))
        method = struct.pack(">I", 0x003C003C) + b"\x00"  # Basic.Deliver cut short
        data = struct.pack(">BHI", spec.FRAME_METHOD, 1, len(method)) + method + b"\xce"
        with pytest.raises(struct.error):
            decode_frame(data)

    def test_other_frames_pass_through(self) -> None:
        body = frame.Body(CHANNEL, b"payload").marshal()
        consumed, decoded = decode_frame(body)
        assert consumed == len(body)
        assert isinstance(decoded, frame.Body)
        assert decoded.fragment == b"payload"


class TestInstall:
    def test_install_replaces_only_this_connections_frame_reader(self) -> None:
        data = header_frame(raw(one(amqp.timestamp(2**62))))
        impl = SimpleNamespace(_read_frame=lambda: (0, None), _frame_buffer=data)
        other = SimpleNamespace(_read_frame=lambda: (0, None), _frame_buffer=data)

        assert lenient_frames.install(SimpleNamespace(_impl=impl))  # type: ignore[arg-type]

        consumed, decoded = impl._read_frame()
        assert consumed == len(data)
        assert isinstance(decoded, frame.Header)
        assert undecodable(decoded.properties) is not None
        assert other._read_frame() == (0, None)

    def test_a_pika_without_the_hook_is_reported_and_left_alone(self) -> None:
        impl = SimpleNamespace(_frame_buffer=b"")
        assert not lenient_frames.install(SimpleNamespace(_impl=impl))  # type: ignore[arg-type]
        assert not hasattr(impl, "_read_frame")


# -- properties: whatever a peer sends ---------------------------------------------------

SHORT = st.binary(max_size=40)
LEAVES = st.one_of(
    st.builds(amqp.long_string, st.binary(max_size=40)),
    st.builds(amqp.byte_array, st.binary(max_size=40)),
    st.builds(amqp.timestamp, st.integers(0, 2**64 - 1)),
    st.builds(amqp.decimal, st.integers(0, 255), st.integers(-(2**31), 2**31 - 1)),
    st.builds(amqp.double, st.floats()),
    st.builds(amqp.single, st.floats(width=32)),
    st.builds(amqp.integer, st.just(b"l"), st.integers(-(2**63), 2**63 - 1)),
    st.builds(amqp.integer, st.just(b"i"), st.integers(0, 2**32 - 1)),
    st.builds(amqp.integer, st.just(b"b"), st.integers(-128, 127)),
    st.builds(amqp.integer, st.just(b"t"), st.integers(0, 255)),
    st.just(amqp.void()),
    st.binary(min_size=1, max_size=3),  # type letters pika does not know, cut values
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda vs: amqp.array(*vs), st.lists(inner, max_size=4)),
        st.builds(lambda es: amqp.table(*es), st.lists(st.tuples(SHORT, inner), max_size=4)),
    ),
    max_leaves=12,
)
TABLES = st.builds(lambda es: amqp.table_body(*es), st.lists(st.tuples(SHORT, VALUES), max_size=6))


@given(headers=TABLES, message_id=SHORT, content_type=SHORT)
def test_any_header_table_decodes_or_is_kept_raw_and_what_decodes_can_be_republished(
    headers: bytes, message_id: bytes, content_type: bytes
) -> None:
    properties = amqp.RawMessage(
        message_id=message_id, content_type=content_type, headers=headers
    ).properties_payload()
    data = header_frame(properties)

    consumed, decoded = decode_frame(data)

    assert consumed == len(data)
    assert isinstance(decoded, frame.Header)
    found = undecodable(decoded.properties)
    if found is not None:
        assert isinstance(decoded.properties, UndecodedProperties)
        assert found.raw == properties
        return
    republished = failure_headers(
        decoded.properties.headers or {},
        attempt=1,
        error=ErrorInfo(type="E", message="m"),
        failed_queue="q",
        routing_key="k",
        exchange="x",
    )
    pika.data.encode_table([], republished)  # raises when a value cannot go out again


@given(st.binary(max_size=200))
def test_any_property_bytes_at_all_never_raise_out_of_a_header_frame(properties: bytes) -> None:
    consumed, decoded = decode_frame(header_frame(properties))
    assert consumed > 0
    assert isinstance(decoded, frame.Header)
