"""Floats in header tables as AMQP doubles, and read back as floats: the fences around
pika's field-table codec (outbox_relay.pika_doubles, outbox_relay.consumer.lenient_frames).

These tests fail when pika changes what the fences rely on: then review the modules'
RELIES_ON, and only then change their PIKA_VERSION."""

from __future__ import annotations

import math
import struct
from typing import Any

import pika
import pika.data
import pika.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay import pika_doubles
from outbox_relay.consumer import lenient_frames


@pytest.fixture(autouse=True)
def _codec() -> None:
    lenient_frames.install_field_codec()


def encoded(table: dict[str, Any]) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, table)
    return b"".join(pieces)


class TestPikaItself:
    def test_the_fences_were_written_for_the_installed_pika(self) -> None:
        assert pika.__version__ == pika_doubles.PIKA_VERSION == lenient_frames.PIKA_VERSION

    def test_pika_alone_still_cannot_encode_a_float(self) -> None:
        with pytest.raises(pika.exceptions.UnsupportedAMQPFieldException):
            pika_doubles._pika_encode_value([], 0.5)

    def test_pika_alone_still_truncates_floats_and_doubles(self) -> None:
        decode = lenient_frames._pika_decode_value
        assert decode(b"d" + struct.pack(">d", 2.75), 0) == (2, 9)
        assert decode(b"f" + struct.pack(">f", 0.5), 0) == (0, 5)
        assert type(decode(b"l" + struct.pack(">q", 2**40), 0)[0]) is not int
        assert type(decode(b"L" + struct.pack(">q", 2**40), 0)[0]) is not int


class TestDoubles:
    def test_a_float_is_written_as_a_double(self) -> None:
        table = encoded({"score": 0.5})
        assert table == struct.pack(">I", 15) + b"\x05score" + b"d" + struct.pack(">d", 0.5)

    def test_floats_in_arrays_and_nested_tables_too(self) -> None:
        table = {"lst": [1, 0.5], "t": {"ratio": 2.75}}
        assert pika.data.decode_table(encoded(table), 0)[0] == table

    @given(st.floats(allow_nan=False, allow_infinity=False))
    def test_every_finite_double_comes_back_bit_for_bit(self, value: float) -> None:
        (decoded,) = pika.data.decode_table(encoded({"v": value}), 0)[0].values()
        assert type(decoded) is float
        assert struct.pack(">d", decoded) == struct.pack(">d", value)

    @given(st.floats(width=32, allow_nan=False, allow_infinity=False))
    def test_a_single_precision_float_from_another_client_is_read_as_a_float(
        self, value: float
    ) -> None:
        data = struct.pack(">I", 7) + b"\x01v" + b"f" + struct.pack(">f", value)
        assert pika.data.decode_table(data, 0)[0] == {"v": value}

    @given(st.integers(-(2**63), 2**63 - 1), st.sampled_from([b"l", b"L"]))
    def test_long_integers_are_plain_ints(self, value: int, kind: bytes) -> None:
        # RabbitMQ writes 'l'; py-amqp (under kombu and Celery) writes 'L', signed too.
        data = struct.pack(">I", 11) + b"\x01v" + kind + struct.pack(">q", value)
        decoded = pika.data.decode_table(data, 0)[0]["v"]
        assert type(decoded) is int
        assert decoded == value

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_nan_and_infinity_stay_undecodable(self, value: float) -> None:
        data = struct.pack(">I", 11) + b"\x01v" + b"d" + struct.pack(">d", value)
        with pytest.raises(ValueError, match="NaN or infinity"):
            pika.data.decode_table(data, 0)
