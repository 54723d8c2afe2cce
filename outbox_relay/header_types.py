"""Header values JSON has no type for: stored in the outbox's jsonb, sent as their AMQP type.

Pure: no I/O. A JSON number with a fraction (``1.0``, ``0.5``) is a float and travels as
an AMQP double: jsonb keeps the digits as written, so ``1.0`` stays ``1.0``. For the
values JSON has no word for, ``publish`` stores a *typed value*, a JSON object with a
single key that names the type. ``publish`` refuses a table of its own with exactly one
of these keys, and the consumer SDK owns headers starting with ``outbox-``, so an
ordinary object is never taken for a typed value:

==========================  ===================================  ====================
Python value                stored as                            sent as (AMQP type)
==========================  ===================================  ====================
``float``                   ``1.5``; ``{"outbox-double": "1e+16"}``  double ``d``
                            from 1e16 up (jsonb would write
                            those out as integers)
``decimal.Decimal``         ``{"outbox-decimal": "12.50"}``      decimal ``D``
``datetime.datetime``       ``{"outbox-timestamp": 1700000000}``  timestamp ``T``
                            (whole seconds since 1970, UTC; a
                            naive datetime is taken as UTC)
``bytes``, ``bytearray``    ``{"outbox-bytes": "<base64>"}``     byte array ``x``
==========================  ===================================  ====================

A plain SQL writer may write the same objects. :func:`from_json` turns them back into
the Python values pika encodes; one it cannot read raises :class:`UnencodableError`
naming it, and the relay fails that row alone.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any

from outbox_relay.amqp_fields import MAX_HEADER_DEPTH, UnencodableError, shown

DOUBLE = "outbox-double"
DECIMAL = "outbox-decimal"
TIMESTAMP = "outbox-timestamp"
BYTES = "outbox-bytes"
TAGS = frozenset((DOUBLE, DECIMAL, TIMESTAMP, BYTES))
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# AMQP's decimal: an octet of decimal places and a signed 32-bit integer.
_MAX_DECIMAL_PLACES = 255
_INT32 = 2**31
_UINT64 = 2**64


def to_json(value: Any, path: str = "") -> Any:  # noqa: PLR0911 - one return per type
    """``value`` (a header table or one of its values) as JSON-ready Python, each value
    JSON cannot type written as its typed value. Raises UnencodableError naming a value
    AMQP cannot carry or a reserved key."""
    if isinstance(value, float):
        text = repr(value)
        # jsonb writes 1e+16 and 1.5e+16 out as integers: those are typed values.
        return {DOUBLE: text} if "e+" in text else value
    if isinstance(value, (str, int, type(None))):  # bool is an int
        return value
    if isinstance(value, Mapping):
        if len(value) == 1:
            (key,) = value
            if key in TAGS:
                raise UnencodableError(
                    f"{shown(path or 'the table')} is a table whose only key is {shown(key)}, "
                    "which marks a typed value; rename the key or add another"
                )
        return {key: to_json(item, _at(path, key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, decimal.Decimal):
        decimal_problem(value, path)
        return {DECIMAL: str(value)}
    if isinstance(value, dt.datetime):
        return {TIMESTAMP: _seconds(value, path)}
    if isinstance(value, (bytes, bytearray)):
        return {BYTES: base64.b64encode(value).decode("ascii")}
    return value  # amqp_fields.table_size names what else AMQP cannot carry


def table_from_json(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The header table pika encodes, from headers loaded from the outbox's JSON: each
    typed value becomes its float, Decimal, datetime or bytes. The table itself is never
    a typed value, whatever its keys (a plain SQL writer can write ``{"outbox-double":
    "1.5"}`` as the headers); raises UnencodableError past MAX_HEADER_DEPTH levels."""
    return {key: from_json(item, str(key), 1) for key, item in headers.items()}


def from_json(value: Any, path: str = "", depth: int = 0) -> Any:
    """One stored header value as pika encodes it (see :func:`table_from_json`)."""
    if isinstance(value, (dict, list)) and depth > MAX_HEADER_DEPTH + 1:
        # Past what amqp_fields.table_size refuses anyway: stop before Python's recursion limit.
        raise UnencodableError(
            f"{shown(path or 'the table')} is nested too deep: more than {MAX_HEADER_DEPTH} "
            "levels of tables and lists"
        )
    if isinstance(value, dict):
        if len(value) == 1:
            (key,) = value
            if key in TAGS:
                return _typed(key, value[key], path)
        return {key: from_json(item, _at(path, key), depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    return value


def decimal_problem(value: decimal.Decimal, path: str) -> None:
    """Raise UnencodableError when ``value`` is no AMQP decimal: not finite, more than
    255 decimal places, or more digits than a signed 32-bit integer holds."""
    if not value.is_finite():
        raise UnencodableError(f"{shown(path)} is {value}; an AMQP decimal is finite")
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    assert isinstance(exponent, int)  # noqa: S101 - finite
    places = max(0, -exponent)
    raw = int(normal.scaleb(places))
    if places > _MAX_DECIMAL_PLACES or not -_INT32 <= raw < _INT32:
        raise UnencodableError(
            f"{shown(path)} is {shown(str(value))}: an AMQP decimal holds a signed 32-bit "
            "integer of digits and up to 255 decimal places; send it as a string"
        )


def _typed(tag: str, stored: Any, path: str) -> Any:
    try:
        if tag == DOUBLE and isinstance(stored, str):
            return float(stored)
        if tag == DECIMAL and isinstance(stored, str):
            number = decimal.Decimal(stored)
            decimal_problem(number, path)
            return number
        if tag == TIMESTAMP and isinstance(stored, int) and 0 <= stored < _UINT64:
            return _EPOCH + dt.timedelta(seconds=stored)
        if tag == BYTES and isinstance(stored, str):
            return base64.b64decode(stored, validate=True)
    except (ValueError, ArithmeticError, OverflowError, binascii.Error):
        pass
    raise UnencodableError(
        f"{shown(path)} is the typed value {{{tag!r}: {shown(stored)}}}, which cannot be "
        "read; see outbox_relay.header_types for the forms"
    )


def _seconds(value: dt.datetime, path: str) -> int:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    seconds = (aware - _EPOCH) // dt.timedelta(seconds=1)
    if seconds < 0:
        raise UnencodableError(
            f"{shown(path)} is {value.isoformat()}: an AMQP timestamp starts in 1970"
        )
    return seconds


def _at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)
