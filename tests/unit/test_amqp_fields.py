"""AMQP sizes computed without pika agree with pika's own encoder, byte for byte; what
AMQP cannot carry is named. If pika changes how it encodes, these tests fail."""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika import frame
from pika.data import encode_table
from pika.spec import BasicProperties

from outbox_relay import header_types, pika_doubles
from outbox_relay.amqp_fields import (
    MAX_HEADER_DEPTH,
    MAX_PROPERTIES_BYTES,
    OPTIONAL_TEXT_PROPERTIES,
    UnencodableError,
    content_header_frame_bytes,
    short_string_problem,
    shown,
    table_size,
)
from outbox_relay.properties import properties_bytes

# Text PostgreSQL stores: no NUL, no lone surrogates.
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
# Header names, but not the keys that mark a stored typed value (outbox_relay.header_types):
# a table holding only one of those is a value of another AMQP type, not a table.
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60
).filter(lambda name: name not in header_types.TAGS)
# Floats travel as doubles: the relay's process encodes them so.
pika_doubles.install()
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(
        allow_nan=False, allow_infinity=False, places=3, min_value=-(10**6), max_value=10**6
    )
    | st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9999, 1, 1))
    | st.binary(max_size=20)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=20,
)
tables = st.dictionaries(names, values, max_size=8)


def pika_table_bytes(table: dict[str, Any]) -> int:
    pieces: list[bytes] = []
    encode_table(pieces, header_types.table_from_json(table))
    return len(b"".join(pieces))


def nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        table = {"t": table}
    return table


class TestTableSize:
    @given(tables)
    def test_is_the_size_pika_encodes_as_the_relay_sends_it(self, table: dict[str, Any]) -> None:
        assert table_size(table) == pika_table_bytes(table)

    @pytest.mark.parametrize("value", [0, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**63 - 1])
    def test_ints_take_four_or_eight_bytes_as_pika_chooses(self, value: int) -> None:
        assert table_size({"i": value}) == pika_table_bytes({"i": value})

    def test_the_table_that_stopped_the_relay_is_150_kb(self) -> None:
        assert table_size({"h": [0] * 30000}) == 4 + 2 + 5 + 5 * 30000

    def test_nesting_is_allowed_to_the_maximum_depth_and_no_further(self) -> None:
        assert table_size(nested(MAX_HEADER_DEPTH)) > 0
        with pytest.raises(UnencodableError, match="nested too deep"):
            table_size(nested(MAX_HEADER_DEPTH + 1))
        lists: Any = 1
        for _ in range(MAX_HEADER_DEPTH):
            lists = [lists]
        with pytest.raises(UnencodableError, match="nested too deep"):
            table_size({"l": lists})

    def test_a_table_that_contains_itself_is_too_deep_not_a_recursion_error(self) -> None:
        table: dict[str, Any] = {}
        table["self"] = table
        with pytest.raises(UnencodableError, match="nested too deep"):
            table_size(table)

    @pytest.mark.parametrize(
        ("table", "names"),
        [
            ({"big": 2**63}, ["'big'", "64-bit"]),
            ({"l": [1, -(2**63) - 1]}, ["'l[1]'", "64-bit"]),
            ({"t": {"n" * 300: 1}}, ["t.nnn", "300 bytes", "255"]),
            ({"t": {"é" * 128: 1}}, ["256 bytes"]),
            ({"nul": "a\x00b"}, ["'nul'", "NUL"]),
            ({"a\x00": 1}, ["NUL"]),
            ({"s": "\ud800"}, ["'s'", "surrogate"]),
            ({"\udfff": 1}, ["surrogate"]),
            ({"f": math.inf}, ["'f'", "inf"]),
            ({"f": math.nan}, ["'f'", "nan"]),
            ({"o": object()}, ["'o'", "object"]),
            ({1: "x"}, ["not a str", "1"]),
            ({"t": {10**5000: 1}}, ["not a str", "an int of"]),
        ],
        ids=lambda value: str(value)[:20] if not isinstance(value, dict) else None,
    )
    def test_names_what_amqp_or_postgresql_cannot_carry(
        self, table: dict[Any, Any], names: list[str]
    ) -> None:
        with pytest.raises(UnencodableError) as info:
            table_size(table)
        for name in names:
            assert name in str(info.value)
        assert len(str(info.value)) < 300

    def test_tuples_and_mappings_count_as_lists_and_tables(self) -> None:
        from types import MappingProxyType

        proxy = MappingProxyType({"a": (1, "x")})
        assert table_size({"m": proxy}) == table_size({"m": {"a": [1, "x"]}})


short_strings = st.text(max_size=60).filter(lambda t: len(t.encode()) <= 255)
# The optional properties as publish() stores them (see outbox_relay.properties).
optional_properties = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(
            ("content_encoding", "correlation_id", "reply_to", "type", "app_id"), short_strings
        ),
        "expiration": st.integers(0, 2**32 - 1).map(str),
        "priority": st.integers(0, 255),
    },
)


class TestContentHeaderFrame:
    @given(content_type=short_strings, headers=st.none() | tables, properties=optional_properties)
    def test_is_the_size_of_the_frame_pika_writes(
        self, content_type: str, headers: dict[str, Any] | None, properties: dict[str, Any]
    ) -> None:
        message_id = str(uuid.uuid4())
        amqp_properties = BasicProperties(  # type: ignore[no-untyped-call]
            content_type=content_type,
            delivery_mode=2,
            message_id=message_id,
            timestamp=int(time.time()),
            headers=header_types.table_from_json(headers) if headers else None,
            **properties,
        )
        real = len(frame.Header(1, 10, amqp_properties).marshal())  # type: ignore[no-untyped-call]
        computed = content_header_frame_bytes(
            content_type=content_type,
            message_id=message_id,
            headers_bytes=table_size(headers) if headers else None,
            properties_bytes=properties_bytes(properties),
        )
        assert computed == real

    def test_the_largest_properties_leave_the_rest_of_the_default_frame_to_headers(self) -> None:
        longest = "x" * 255
        every = dict.fromkeys(OPTIONAL_TEXT_PROPERTIES, longest)
        frame_bytes = content_header_frame_bytes(
            content_type=longest,
            message_id=longest,
            headers_bytes=None,
            properties_bytes=properties_bytes({**every, "priority": 255}),
        )
        assert frame_bytes == MAX_PROPERTIES_BYTES
        # Under the smallest frame_max AMQP allows: a row without headers always fits.
        assert MAX_PROPERTIES_BYTES < 4096


class TestShortStrings:
    @given(st.text(max_size=300))
    def test_a_short_string_is_at_most_255_bytes_of_utf8(self, value: str) -> None:
        problem = short_string_problem("exchange", value)
        assert (problem is None) == (len(value.encode("utf-8")) <= 255)
        if problem is not None:
            assert problem.startswith("exchange is ")
            assert "255" in problem

    def test_a_lone_surrogate_is_named(self) -> None:
        assert "surrogate" in (short_string_problem("routing_key", "a\ud800") or "")


class TestShown:
    @pytest.mark.parametrize(
        "value",
        ["x" * 1000, 10**5000, "\ud800", b"x" * 1000, float("nan"), None],
        ids=["long-str", "huge-int", "surrogate", "bytes", "nan", "none"],
    )
    def test_anything_is_shown_short_and_printable(self, value: object) -> None:
        text = shown(value)
        assert len(text) < 100
        text.encode("utf-8")

    def test_an_object_whose_repr_fails_is_shown_by_its_type(self) -> None:
        class Broken:
            def __repr__(self) -> str:
                raise RuntimeError

        assert "Broken" in shown(Broken())
