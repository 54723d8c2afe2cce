"""Header values JSON has no type for: their typed values, both ways."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any

import pytest

from outbox_relay import header_types
from outbox_relay.amqp_fields import UnencodableError
from outbox_relay.encoding import encode_headers
from outbox_relay.errors import InvalidMessageError

UTC = dt.timezone.utc


class TestStoredForms:
    @pytest.mark.parametrize(
        ("value", "stored"),
        [
            (1.0, 1.0),
            (0.5, 0.5),
            (1e-7, 1e-7),
            (1e16, {"outbox-double": "1e+16"}),
            (-2.5e300, {"outbox-double": "-2.5e+300"}),
            (decimal.Decimal("12.50"), {"outbox-decimal": "12.50"}),
            (dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), {"outbox-timestamp": 1704164645}),
            (dt.datetime(2024, 1, 2, 3, 4, 5), {"outbox-timestamp": 1704164645}),  # naive: UTC
            (
                dt.datetime(
                    2024, 1, 2, 4, 4, 5, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=1))
                ),
                {"outbox-timestamp": 1704164645},  # whole seconds
            ),
            (b"\x00\xff", {"outbox-bytes": "AP8="}),
            (bytearray(b"ab"), {"outbox-bytes": "YWI="}),
            ({"n": [decimal.Decimal(1)]}, {"n": [{"outbox-decimal": "1"}]}),
        ],
    )
    def test_what_json_cannot_type_is_stored_as_a_typed_value(
        self, value: object, stored: object
    ) -> None:
        assert json.loads(encode_headers({"h": value})) == {"h": stored}

    def test_typed_values_come_back_as_their_python_values(self) -> None:
        stored = {
            "f": 1.0,
            "big": {"outbox-double": "1e+16"},
            "d": {"outbox-decimal": "12.50"},
            "t": {"outbox-timestamp": 1704164645},
            "b": {"outbox-bytes": "AP8="},
            "nested": [{"k": {"outbox-decimal": "-1"}}],
            "plain": {"outbox-decimal": "1", "other": 2},  # two keys: an ordinary table
        }
        assert header_types.from_json(stored) == {
            "f": 1.0,
            "big": 1e16,
            "d": decimal.Decimal("12.50"),
            "t": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            "b": b"\x00\xff",
            "nested": [{"k": decimal.Decimal(-1)}],
            "plain": {"outbox-decimal": "1", "other": 2},
        }
        assert isinstance(header_types.from_json(stored)["big"], float)


class TestRefused:
    @pytest.mark.parametrize(
        ("value", "names"),
        [
            ({"outbox-decimal": "1"}, ["typed value", "outbox-decimal"]),
            (decimal.Decimal("NaN"), ["NaN"]),
            (decimal.Decimal(2**31), ["32-bit"]),
            (decimal.Decimal("1e-256"), ["255 decimal places"]),
            (dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), ["1970"]),
        ],
    )
    def test_at_publish(self, value: object, names: list[str]) -> None:
        with pytest.raises(InvalidMessageError) as info:
            encode_headers({"h": {"in": value}})
        assert "'h.in'" in str(info.value)
        for name in names:
            assert name in str(info.value)

    @pytest.mark.parametrize(
        "stored",
        [
            {"outbox-double": 1.5},
            {"outbox-double": "fast"},
            {"outbox-decimal": "ten"},
            {"outbox-decimal": "99999999999"},
            {"outbox-timestamp": -1},
            {"outbox-timestamp": 2**64},
            {"outbox-timestamp": "2024-01-01"},
            {"outbox-timestamp": 10**15},  # past the year 9999
            {"outbox-bytes": "not base64!"},
        ],
    )
    def test_at_the_relay_naming_the_value(self, stored: dict[str, Any]) -> None:
        with pytest.raises(UnencodableError, match=r"'a\[0\]' is the typed value"):
            header_types.from_json({"a": [stored]})
