"""What a message is, before it is written and after it is claimed; validation and encoding.

Pure: no I/O. ``publish`` builds :class:`NewMessage` values here, so every argument is
checked before anything reaches the database.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from outbox_relay.errors import InvalidMessageError
from outbox_relay.ids import uuid7

JSON_CONTENT_TYPE = "application/json"
BYTES_CONTENT_TYPE = "application/octet-stream"
MAX_ROUTING_KEY_BYTES = 255  # AMQP 0-9-1 shortstr
MAX_EXCHANGE_NAME_BYTES = 255
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # RabbitMQ's own default max_message_size is 16 MiB
MAX_HEADER_COUNT = 100
MAX_SHORT_STRING_BYTES = 255  # AMQP shortstr: header names, content type
MAX_HEADERS_JSON_BYTES = 64 * 1024
# RabbitMQ refuses any message over 512 MiB whatever max_message_size says.
BROKER_MAX_MESSAGE_BYTES = 512 * 1024 * 1024

# Header names the consumer SDK owns (attempt count, error details): a producer may not set them.
RESERVED_HEADER_PREFIXES = ("outbox-",)


@dataclass(frozen=True, slots=True)
class Limits:
    """What ``publish`` accepts, checked before anything is written.

    The defaults suit RabbitMQ's defaults: raise ``max_payload_bytes`` together with the
    broker's ``max_message_size`` (a message over it closes the relay's channel and the
    row fails at the broker instead of at ``publish``).
    """

    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_header_count: int = MAX_HEADER_COUNT
    max_headers_json_bytes: int = MAX_HEADERS_JSON_BYTES

    def __post_init__(self) -> None:
        for name, value, ceiling in (
            ("max_payload_bytes", self.max_payload_bytes, BROKER_MAX_MESSAGE_BYTES),
            ("max_header_count", self.max_header_count, None),
            ("max_headers_json_bytes", self.max_headers_json_bytes, None),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name}: expected a positive int, got {value!r}")
            if ceiling is not None and value > ceiling:
                raise ValueError(
                    f"Limits.{name}: {value} is over the {ceiling} bytes RabbitMQ accepts "
                    "in one message"
                )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message ready to be inserted into the outbox."""

    message_id: uuid.UUID
    exchange: str
    routing_key: str
    payload: bytes
    content_type: str
    headers_json: str
    partition_key: str | None
    delay_s: float


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A row claimed by the relay, as it will be published."""

    id: int
    message_id: uuid.UUID
    exchange: str
    routing_key: str
    payload: bytes
    content_type: str
    headers: Mapping[str, Any]
    partition_key: str | None
    created_at: dt.datetime
    attempts: int = 0


def new_message(
    *,
    exchange: str,
    routing_key: str,
    payload: object,
    headers: Mapping[str, object] | None = None,
    message_id: uuid.UUID | str | None = None,
    partition_key: str | None = None,
    delay: float | dt.timedelta | None = None,
    content_type: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> NewMessage:
    """Validate the arguments of ``publish`` and encode the payload.

    Raises :class:`InvalidMessageError` naming the argument and the fix.
    """
    _check_name("exchange", exchange, MAX_EXCHANGE_NAME_BYTES, allow_empty=False)
    _check_name("routing_key", routing_key, MAX_ROUTING_KEY_BYTES, allow_empty=True)
    body, ctype = encode_payload(payload, content_type, limits)
    return NewMessage(
        message_id=_message_id(message_id),
        exchange=exchange,
        routing_key=routing_key,
        payload=body,
        content_type=ctype,
        headers_json=encode_headers(headers, limits),
        partition_key=_partition_key(partition_key),
        delay_s=delay_seconds(delay),
    )


def encode_payload(
    payload: object, content_type: str | None, limits: Limits = DEFAULT_LIMITS
) -> tuple[bytes, str]:
    """Bytes pass through with their content type; anything else is encoded as JSON."""
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
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidMessageError(
                f"payload: cannot be encoded as JSON ({exc}); pass a JSON-serialisable "
                "object, or bytes with a content_type"
            ) from exc
        body = text.encode("utf-8")
        ctype = JSON_CONTENT_TYPE
    if not ctype.strip() or len(ctype.encode("utf-8")) > MAX_SHORT_STRING_BYTES:
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


def encode_headers(headers: Mapping[str, object] | None, limits: Limits = DEFAULT_LIMITS) -> str:
    """Headers as JSON text for the jsonb column; keys are str, values JSON-representable."""
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
            raise InvalidMessageError(f"headers: key {key!r} is not a non-empty str")
        if key.lower().startswith(RESERVED_HEADER_PREFIXES):
            raise InvalidMessageError(
                f"headers: {key!r} uses a reserved prefix ({', '.join(RESERVED_HEADER_PREFIXES)}"
                "); choose another name"
            )
    _check_header_table("", headers)
    text = json.dumps(headers, separators=(",", ":"), ensure_ascii=False)
    size = len(text.encode("utf-8"))
    if size > limits.max_headers_json_bytes:
        raise InvalidMessageError(
            f"headers: {size} bytes of headers exceed the {limits.max_headers_json_bytes}-byte "
            "limit (Limits.max_headers_json_bytes); put large data in the payload"
        )
    return text


def amqp_problem(row: OutboxRow) -> str | None:
    """Why a claimed row cannot be encoded as an AMQP message, or None when it can.

    ``publish`` never writes such a row; this names the culprit of one written past it
    (by SQL, or by an older version), so the relay can fail that row alone.
    """
    for name, value in (("routing_key", row.routing_key), ("content_type", row.content_type)):
        size = len(value.encode("utf-8"))
        if size > MAX_SHORT_STRING_BYTES:
            return f"{name} is {size} bytes; AMQP allows {MAX_SHORT_STRING_BYTES}"
    if not isinstance(row.headers, Mapping):
        return f"headers: expected a JSON object, got a JSON {type(row.headers).__name__}"
    try:
        _check_header_table("", row.headers)
    except InvalidMessageError as exc:
        return str(exc)
    return None


def _check_header_table(path: str, table: Mapping[Any, object]) -> None:
    for key, item in table.items():
        where = f"{path}.{key}" if path else str(key)
        if not isinstance(key, str):
            raise InvalidMessageError(f"headers: {path!r} has a non-str key {key!r}")
        if len(key.encode("utf-8")) > MAX_SHORT_STRING_BYTES:
            raise InvalidMessageError(
                f"headers: the name {where[:40]!r}... is {len(key.encode('utf-8'))} bytes; "
                f"AMQP allows {MAX_SHORT_STRING_BYTES}"
            )
        _check_header_value(where, item)


def _check_header_value(path: str, value: object) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidMessageError(f"headers: {path!r} does not fit in a signed 64-bit integer")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessageError(
                f"headers: {path!r} is {value}; AMQP and JSON need a finite number"
            )
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_header_value(f"{path}[{index}]", item)
        return
    if isinstance(value, Mapping):
        _check_header_table(path, value)
        return
    raise InvalidMessageError(
        f"headers: {path!r} is a {type(value).__name__}; use str, int, float, bool, None, "
        "or lists and dicts of them"
    )


def delay_seconds(delay: float | dt.timedelta | None) -> float:
    """A delay as non-negative finite seconds."""
    if delay is None:
        return 0.0
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidMessageError(
            f"delay: expected seconds or a timedelta, got {type(delay).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidMessageError(f"delay: {seconds!r} is not a non-negative number of seconds")
    return float(seconds)


def _check_name(argument: str, value: object, max_bytes: int, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{argument}: expected str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidMessageError(
            f"{argument}: must not be empty (the default exchange cannot route by topic); "
            "name the topic exchange to publish to"
        )
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise InvalidMessageError(
            f"{argument}: {size} bytes exceeds AMQP's limit of {max_bytes} bytes"
        )


def _message_id(value: uuid.UUID | str | None) -> uuid.UUID:
    if value is None:
        return uuid7()
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError as exc:
            raise InvalidMessageError(
                f"message_id: {value!r} is not a UUID; pass a uuid.UUID or leave it out"
            ) from exc
    raise InvalidMessageError(f"message_id: expected a UUID, got {type(value).__name__}")


def _partition_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidMessageError(f"partition_key: expected a non-empty str or None, got {value!r}")
    if len(value.encode("utf-8")) > 1024:
        raise InvalidMessageError("partition_key: longer than 1024 bytes; use the aggregate's id")
    return value
