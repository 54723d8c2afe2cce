"""``publish``'s arguments checked and encoded for the outbox: payload, headers, names, delay.

Pure: no I/O. :func:`new_message` turns an :class:`~outbox_relay.message.OutboxMessage`
into the :class:`~outbox_relay.message.NewMessage` the writer inserts, so every argument
is checked before anything reaches the database.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping

from outbox_relay import header_types
from outbox_relay.amqp_fields import MAX_SHORT_STRING_BYTES, UnencodableError, shown, table_size
from outbox_relay.errors import InvalidMessageError
from outbox_relay.ids import uuid7
from outbox_relay.message import (
    BYTES_CONTENT_TYPE,
    DEFAULT_LIMITS,
    JSON_CONTENT_TYPE,
    MAX_DELAY_S,
    MAX_EXCHANGE_NAME_BYTES,
    MAX_MESSAGE_ID_BYTES,
    MAX_PARTITION_KEY_BYTES,
    MAX_ROUTING_KEY_BYTES,
    RESERVED_HEADER_PREFIXES,
    Limits,
    NewMessage,
    OutboxMessage,
)
from outbox_relay.properties import encode_properties


def new_message(message: OutboxMessage, limits: Limits = DEFAULT_LIMITS) -> NewMessage:
    """Validate ``message`` (``publish``'s arguments) and encode it for the outbox.

    Raises :class:`InvalidMessageError` naming the argument and the fix.
    """
    if not isinstance(limits, Limits):
        raise InvalidMessageError(
            f"limits: expected outbox_relay.Limits, got {limits.__class__.__name__}"
        )
    # "" is the default exchange: it routes to the queue named by the routing key.
    _check_name("exchange", message.exchange, MAX_EXCHANGE_NAME_BYTES, allow_empty=True)
    _check_name("routing_key", message.routing_key, MAX_ROUTING_KEY_BYTES, allow_empty=True)
    body, ctype = encode_payload(message.payload, message.content_type, limits)
    return NewMessage(
        message_id=_message_id(message.message_id),
        exchange=message.exchange,
        routing_key=message.routing_key,
        payload=body,
        content_type=ctype,
        headers_json=encode_headers(message.headers, limits),
        partition_key=_partition_key(message.partition_key),
        delay_s=delay_seconds(message.delay),
        properties_json=encode_properties(message),
    )


def encode_payload(
    payload: object, content_type: str | None, limits: Limits = DEFAULT_LIMITS
) -> tuple[bytes, str]:
    """Bytes pass through with their content type; anything else is encoded as JSON."""
    if content_type is not None:
        _check_name("content_type", content_type, MAX_SHORT_STRING_BYTES, allow_empty=False)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        body = bytes(payload)
        ctype = content_type or BYTES_CONTENT_TYPE
    else:
        if content_type is not None and content_type != JSON_CONTENT_TYPE:
            raise InvalidMessageError(
                f"payload: content_type {content_type!r} was given with a "
                f"{type(payload).__name__} payload; pass bytes already encoded as "
                f"{content_type!r}, or leave content_type out to send JSON"
            )
        body = _json_bytes(payload)
        ctype = JSON_CONTENT_TYPE
    if not ctype.strip():
        raise InvalidMessageError(
            f"content_type: {ctype!r} is not a usable MIME type; pass e.g. 'text/plain'"
        )
    if len(body) > limits.max_payload_bytes:
        raise InvalidMessageError(
            f"payload: {len(body)} bytes exceeds the {limits.max_payload_bytes}-byte limit; "
            "store large data elsewhere and publish a reference to it (or raise "
            "Limits.max_payload_bytes along with the broker's max_message_size)"
        )
    return body, ctype


def _json_bytes(payload: object) -> bytes:
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except RecursionError:
        problem = "it is nested too deep"
    except UnicodeEncodeError:
        problem = "it holds text that is not valid Unicode (a lone surrogate)"
    except (TypeError, ValueError) as exc:
        problem = str(exc)[:200]
    raise InvalidMessageError(
        f"payload: cannot be encoded as JSON ({problem}); pass a JSON-serialisable "
        "object, or bytes with a content_type"
    )


def encode_headers(headers: Mapping[str, object] | None, limits: Limits = DEFAULT_LIMITS) -> str:
    """Headers as JSON text for the jsonb column, once checked against what AMQP carries
    (see :func:`outbox_relay.amqp_fields.table_size`) and ``limits``."""
    if headers is None:
        return "{}"
    if not isinstance(headers, Mapping):
        raise InvalidMessageError(
            f"headers: expected a dict of str to values, got {type(headers).__name__}"
        )
    if len(headers) > limits.max_header_count:
        raise InvalidMessageError(
            f"headers: {len(headers)} headers exceed the limit of {limits.max_header_count} "
            "(Limits.max_header_count)"
        )
    for key in headers:
        if not isinstance(key, str) or not key:
            raise InvalidMessageError(f"headers: key {shown(key)} is not a non-empty str")
        if key.lower().startswith(RESERVED_HEADER_PREFIXES):
            raise InvalidMessageError(
                f"headers: {shown(key)} uses a reserved prefix "
                f"({', '.join(RESERVED_HEADER_PREFIXES)}); choose another name"
            )
    try:
        size = table_size(headers)
    except UnencodableError as exc:
        raise InvalidMessageError(f"headers: {exc}") from None
    if size > limits.max_headers_bytes:
        raise InvalidMessageError(
            f"headers: {size} bytes once AMQP-encoded exceed the {limits.max_headers_bytes}-"
            "byte limit (Limits.max_headers_bytes); put large data in the payload"
        )
    try:
        # Decimal, datetime, bytes and large floats as typed values (header_types).
        return json.dumps(
            header_types.to_json(headers),
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except UnencodableError as exc:
        raise InvalidMessageError(f"headers: {exc}") from None
    except ValueError as exc:
        raise InvalidMessageError(
            f"headers: cannot be encoded as JSON ({exc}); use finite numbers"
        ) from None


def delay_seconds(delay: float | dt.timedelta | None) -> float:
    """A delay as seconds from 0 to MAX_DELAY_S."""
    if delay is None:
        return 0.0
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidMessageError(
            f"delay: expected seconds or a timedelta, got {type(delay).__name__}"
        )
    # Compared, not converted: an int too large for a float is refused, not an error.
    if not 0 <= seconds <= MAX_DELAY_S:
        raise InvalidMessageError(
            f"delay: {shown(seconds)} is not between 0 and {MAX_DELAY_S:.0f} seconds "
            "(a year, MAX_DELAY_S); a delayed message holds back its partition key until "
            "it is due, so schedule further ahead in the application"
        )
    return float(seconds)


def _check_name(argument: str, value: object, max_bytes: int, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{argument}: expected str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidMessageError(f"{argument}: must not be empty")
    if "\x00" in value:
        raise InvalidMessageError(
            f"{argument}: holds a NUL character, which PostgreSQL cannot store; remove it"
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidMessageError(
            f"{argument}: is not valid Unicode (it holds a lone surrogate); pass proper text"
        ) from None
    if size > max_bytes:
        whose = "AMQP's limit" if max_bytes == MAX_SHORT_STRING_BYTES else "the limit"
        raise InvalidMessageError(f"{argument}: {size} bytes exceeds {whose} of {max_bytes} bytes")


def _message_id(value: uuid.UUID | str | None) -> str:
    """The id as sent in the AMQP message_id property: a time-ordered UUID unless given."""
    if value is None:
        return str(uuid7())
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        _check_name("message_id", value, MAX_MESSAGE_ID_BYTES, allow_empty=False)
        return value
    raise InvalidMessageError(
        f"message_id: expected a str or a uuid.UUID, got {type(value).__name__}"
    )


def _partition_key(value: str | None) -> str | None:
    if value is None:
        return None
    _check_name("partition_key", value, MAX_PARTITION_KEY_BYTES, allow_empty=False)
    return value
