"""What AMQP 0-9-1 can carry, and in how many bytes: pure, no I/O.

A message's properties travel in one content-header frame, which the broker refuses
(closing the whole connection, 501 FRAME_ERROR) when it is larger than the connection's
negotiated ``frame_max``. Its size is known before anything is sent: this module
computes it exactly as pika encodes it (a unit test compares it with pika's encoder),
for header tables as the relay sends them (see :mod:`outbox_relay.header_types`: floats
as doubles, Decimal, datetime and bytes as AMQP decimals, timestamps and byte arrays).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping
from typing import Any

MAX_SHORT_STRING_BYTES = 255  # AMQP shortstr: exchange, routing key, names, content type
# Nested tables and arrays in headers: deep enough for any real use; a consumer decoding
# them recursively (as pika does) is far from Python's recursion limit.
MAX_HEADER_DEPTH = 32
DEFAULT_FRAME_MAX_BYTES = 131_072  # RabbitMQ's and pika's default frame_max
# A frame's type, channel and size (7 bytes) and its end marker; a content header's
# class id, weight, body size and property flags.
_FRAME_OVERHEAD_BYTES = 8
_CONTENT_HEADER_FIXED_BYTES = 14
_DELIVERY_MODE_BYTES = 1
_TIMESTAMP_BYTES = 8
PRIORITY_BYTES = 1
# The short-string properties a producer may set besides content type and message id
# (see outbox_relay.properties).
OPTIONAL_TEXT_PROPERTIES = (
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "type",
    "app_id",
)
# The content-header frame of a message as the relay sends it, less its header table:
# the largest content type, message id and optional properties AMQP allows, delivery
# mode, priority, timestamp.
MAX_PROPERTIES_BYTES = (
    _FRAME_OVERHEAD_BYTES
    + _CONTENT_HEADER_FIXED_BYTES
    + (2 + len(OPTIONAL_TEXT_PROPERTIES)) * (1 + MAX_SHORT_STRING_BYTES)
    + _DELIVERY_MODE_BYTES
    + PRIORITY_BYTES
    + _TIMESTAMP_BYTES
)
_INT32 = 2**31
_INT64 = 2**63


class UnencodableError(ValueError):
    """A value AMQP (or the outbox table) cannot carry; the text names where and why."""


def short_string_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be an AMQP short string, or None."""
    # isascii() reads a flag CPython keeps: most names cost no encoding.
    if value.isascii():
        if len(value) <= MAX_SHORT_STRING_BYTES:
            return None
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{name} is not valid Unicode (it holds a lone surrogate)"
    if size > MAX_SHORT_STRING_BYTES:
        return f"{name} is {size} bytes; AMQP allows {MAX_SHORT_STRING_BYTES} (a short string)"
    return None


def table_size(table: Mapping[Any, Any], path: str = "") -> int:
    """Bytes of ``table`` encoded as an AMQP field table (with its length prefix).

    Raises :class:`UnencodableError` naming the key or value AMQP cannot carry: a name over
    255 bytes, an int outside 64 bits, nesting deeper than MAX_HEADER_DEPTH, text that
    is not Unicode or holds a NUL (which PostgreSQL cannot store), or a type that is not
    str, int, float, bool, None, Decimal, datetime, bytes, or a list or dict of them.
    Paths in the error are dotted from ``path`` (``'a.b[2]'``).
    """
    return _table(table, path, 1)


def _table(table: Mapping[Any, Any], path: str, depth: int) -> int:
    if depth > MAX_HEADER_DEPTH:
        raise _too_deep(path)
    size = 4
    for key, value in table.items():
        if not isinstance(key, str):
            raise UnencodableError(
                f"{shown(path or 'the table')} has a key that is not a str: {shown(key)}"
            )
        if key.isascii() and len(key) <= MAX_SHORT_STRING_BYTES and "\x00" not in key:
            key_bytes = len(key)
        else:
            key_bytes = _name_bytes(key, _where(path, key))
        size += 1 + key_bytes + _value(value, path, key, depth)
    return size


def _name_bytes(key: str, where: str) -> int:
    problem = short_string_problem(f"the name {shown(where)}", key)
    if problem is not None:
        raise UnencodableError(problem)
    if "\x00" in key:
        raise UnencodableError(
            f"the name {shown(where)} holds a NUL character, which PostgreSQL cannot store"
        )
    return len(key.encode("utf-8"))


def _value(value: Any, path: str, part: str | int, depth: int) -> int:  # noqa: PLR0911
    # One return per type; the value's path is only spelled out for an error or a nest.
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return 5 + len(value)
        return 5 + _text_bytes(value, _where(path, part))
    fixed = _fixed_bytes(value)
    if fixed is not None:
        return fixed
    if isinstance(value, int):
        if -_INT32 <= value < _INT32:
            return 5
        if -_INT64 <= value < _INT64:
            return 9
        raise UnencodableError(
            f"{shown(_where(path, part))} does not fit in a signed 64-bit integer"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnencodableError(
                f"{shown(_where(path, part))} is {value!r}; headers take finite numbers "
                "(JSON has no inf or nan): send it as a string"
            )
        return 9  # a double
    if isinstance(value, (bytes, bytearray)):
        return 5 + len(value)
    if isinstance(value, Mapping):
        return 1 + _table(value, _where(path, part), depth + 1)
    if isinstance(value, (list, tuple)):
        where = _where(path, part)
        if depth + 1 > MAX_HEADER_DEPTH:
            raise _too_deep(where)
        return 5 + sum(_value(item, where, i, depth + 1) for i, item in enumerate(value))
    raise UnencodableError(
        f"{shown(_where(path, part))} is a {type(value).__name__}; use str, int, float, "
        "bool, None, Decimal, datetime, bytes, or lists and dicts of them"
    )


def _fixed_bytes(value: Any) -> int | None:
    """Bytes of a value whose size does not depend on it (None, bool, Decimal, datetime);
    None for any other. The range of a Decimal or datetime is checked where it is
    converted (outbox_relay.header_types)."""
    if value is None:
        return 1
    if isinstance(value, bool):
        return 2
    if isinstance(value, decimal.Decimal):
        return 6
    if isinstance(value, dt.datetime):
        return 9
    return None


def _where(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def _too_deep(path: str) -> UnencodableError:
    return UnencodableError(
        f"{shown(path)} is nested too deep: more than {MAX_HEADER_DEPTH} levels of tables and lists"
    )


def _text_bytes(value: str, path: str) -> int:
    if "\x00" in value:
        raise UnencodableError(
            f"{shown(path)} holds a NUL character, which PostgreSQL cannot store"
        )
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnencodableError(f"{shown(path)} is not valid Unicode (a lone surrogate)") from None


def content_header_frame_bytes(
    *, content_type: str, message_id: str, headers_bytes: int | None, properties_bytes: int = 0
) -> int:
    """Bytes of the content-header frame of a message as the relay sends it (content
    type, delivery mode, message id, timestamp, the header table when there is one, of
    ``headers_bytes`` from :func:`table_size`, and the optional properties, of
    ``properties_bytes`` from :func:`outbox_relay.properties.properties_bytes`)."""
    return (
        properties_bytes
        + _FRAME_OVERHEAD_BYTES
        + _CONTENT_HEADER_FIXED_BYTES
        + 1
        + len(content_type.encode("utf-8"))
        + (headers_bytes or 0)
        + _DELIVERY_MODE_BYTES
        + 1
        + len(message_id.encode("utf-8"))
        + _TIMESTAMP_BYTES
    )


def shown(value: object, limit: int = 60) -> str:
    """``value`` quoted for an error message: cut to ``limit`` characters, whatever it is
    (an int of thousands of digits, a lone surrogate, an object whose repr fails)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not -(10**30) < value < 10**30:
        text = f"<an int of {value.bit_length()} bits>"
    else:
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001 - any object may be passed in
            text = f"<a {type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return repr(text if len(text) <= limit else text[:limit] + "...")
