"""Durations written by people: "500ms", "10s", "1m", "1h", "7d", or a number of seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: object) -> int:
    """``"500ms"``, ``"10s"``, ``"1m"``, ``"1h"`` or a number of seconds, in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{value!r} is not a duration: write e.g. '10s', '1m' or 10")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration: write a number and a unit (ms, s, m, h, d), "
                "e.g. '10s' or '1m'"
            )
        amount = float(match["number"]) * _UNIT_MS[match["unit"]]
    else:
        amount = float(value) * 1_000
    if amount <= 0:
        raise ValueError(f"{value!r} is not positive: a retry delay must be at least 1 ms")
    if amount != int(amount):
        raise ValueError(f"{value!r} is not a whole number of milliseconds")
    return int(amount)
