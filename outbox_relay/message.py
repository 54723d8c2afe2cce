"""What a message is, before it is written and after it is claimed; validation and encoding.

Pure: no I/O. ``publish`` builds :class:`NewMessage` values here, so every argument is
checked before anything reaches the database.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from outbox_relay import header_types
from outbox_relay.amqp_fields import (
    DEFAULT_FRAME_MAX_BYTES,
    MAX_PROPERTIES_BYTES,
    MAX_SHORT_STRING_BYTES,
    UnencodableError,
    content_header_frame_bytes,
    short_string_problem,
    shown,
    table_size,
)
from outbox_relay.errors import InvalidMessageError
from outbox_relay.ids import uuid7
from outbox_relay.properties import encode_properties, properties_bytes, stored_problem

JSON_CONTENT_TYPE = "application/json"
BYTES_CONTENT_TYPE = "application/octet-stream"
MAX_ROUTING_KEY_BYTES = MAX_SHORT_STRING_BYTES
MAX_EXCHANGE_NAME_BYTES = MAX_SHORT_STRING_BYTES
MAX_MESSAGE_ID_BYTES = MAX_SHORT_STRING_BYTES
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # RabbitMQ's own default max_message_size is 16 MiB
MAX_HEADER_COUNT = 100
# The header table as AMQP encodes it (not its JSON): it travels in one frame, with the
# other properties, and must fit in the connection's frame_max.
MAX_HEADERS_BYTES = 64 * 1024
# The most a header table may take under RabbitMQ's default frame_max of 128 KiB.
HEADERS_BYTES_CEILING = DEFAULT_FRAME_MAX_BYTES - MAX_PROPERTIES_BYTES
MAX_PARTITION_KEY_BYTES = 1024
# A delay holds back its partition key until it ends: a year is the most publish() takes.
MAX_DELAY_S = 365 * 24 * 3600.0
# RabbitMQ refuses any message over 512 MiB whatever max_message_size says.
BROKER_MAX_MESSAGE_BYTES = 512 * 1024 * 1024

# Header names the consumer SDK owns (attempt count, error details): a producer may not set them.
RESERVED_HEADER_PREFIXES = ("outbox-",)


@dataclass(frozen=True, slots=True)
class Limits:
    """What ``publish`` accepts, checked before anything is written.

    The defaults suit RabbitMQ's defaults: raise ``max_payload_bytes`` together with the
    broker's ``max_message_size`` (a message over it closes the relay's channel and the
    row fails at the broker instead of at ``publish``). ``max_headers_bytes`` bounds the
    header table as AMQP encodes it; it cannot go past what fits in one frame under
    RabbitMQ's default ``frame_max`` (HEADERS_BYTES_CEILING).
    """

    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_header_count: int = MAX_HEADER_COUNT
    max_headers_bytes: int = MAX_HEADERS_BYTES

    def __post_init__(self) -> None:
        for name, value, ceiling, what in (
            (
                "max_payload_bytes",
                self.max_payload_bytes,
                BROKER_MAX_MESSAGE_BYTES,
                "bytes RabbitMQ accepts in one message",
            ),
            ("max_header_count", self.max_header_count, None, ""),
            (
                "max_headers_bytes",
                self.max_headers_bytes,
                HEADERS_BYTES_CEILING,
                (
                    f"bytes of headers that fit in a frame of {DEFAULT_FRAME_MAX_BYTES} bytes "
                    "(RabbitMQ's default frame_max)"
                ),
            ),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name}: expected a positive int, got {value!r}")
            if ceiling is not None and value > ceiling:
                raise ValueError(f"Limits.{name}: {value} is over the {ceiling} {what}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message ready to be inserted into the outbox."""

    message_id: str
    exchange: str
    routing_key: str
    payload: bytes
    content_type: str
    headers_json: str
    partition_key: str | None
    delay_s: float
    properties_json: str | None = None  # see outbox_relay.properties


@dataclass(frozen=True, slots=True)
class UnreadableHeaders:
    """Stands for a claimed row's headers (or properties) JSON that Python cannot load
    (nested past its recursion limit, a number of thousands of digits): the relay fails
    the row alone."""

    reason: str


NO_PROPERTIES: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A row claimed by the relay, as it will be published. ``headers`` is an
    :class:`UnreadableHeaders` when the stored JSON cannot be loaded in Python, and so
    are ``properties`` (the optional AMQP properties by their names, see
    :mod:`outbox_relay.properties`)."""

    id: int
    message_id: str
    exchange: str
    routing_key: str
    payload: bytes
    content_type: str
    headers: Mapping[str, Any]
    partition_key: str | None
    created_at: dt.datetime
    attempts: int = 0
    properties: Mapping[str, Any] | UnreadableHeaders = field(default_factory=lambda: NO_PROPERTIES)


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
    correlation_id: str | None = None,
    reply_to: str | None = None,
    priority: int | None = None,
    expiration: float | dt.timedelta | None = None,
    type: str | None = None,
    app_id: str | None = None,
    content_encoding: str | None = None,
) -> NewMessage:
    """Validate the arguments of ``publish`` and encode the payload.

    Raises :class:`InvalidMessageError` naming the argument and the fix.
    """
    if not isinstance(limits, Limits):
        raise InvalidMessageError(
            f"limits: expected outbox_relay.Limits, got {limits.__class__.__name__}"
        )
    # "" is the default exchange: it routes to the queue named by the routing key.
    _check_name("exchange", exchange, MAX_EXCHANGE_NAME_BYTES, allow_empty=True)
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
        properties_json=encode_properties(
            correlation_id=correlation_id,
            reply_to=reply_to,
            priority=priority,
            expiration=expiration,
            type=type,
            app_id=app_id,
            content_encoding=content_encoding,
        ),
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


def amqp_problem(row: OutboxRow, *, frame_max: int = DEFAULT_FRAME_MAX_BYTES) -> str | None:
    """Why a claimed row cannot be sent as an AMQP message on a connection whose
    negotiated frame size is ``frame_max`` (0: no limit), or None when it can.

    ``publish`` never writes such a row under the default frame_max; this names the
    culprit of one written past it (by SQL, or by an older version), so the relay can
    fail that row alone before the broker closes the connection over it.
    """
    return amqp_check(row, frame_max=frame_max)[0]


def amqp_check(  # noqa: PLR0911 - one return per problem, and the usual row's
    row: OutboxRow, *, frame_max: int = DEFAULT_FRAME_MAX_BYTES
) -> tuple[str | None, dict[str, Any] | None]:
    """:func:`amqp_problem`, and the header table pika encodes (see
    :func:`outbox_relay.header_types.table_from_json`), or None for a row without
    headers or with a problem. The check converts the table to measure it; the relay
    sends that table rather than convert it twice."""
    headers = row.headers
    exchange, routing_key, content_type = row.exchange, row.routing_key, row.content_type
    message_id = row.message_id
    # isascii() reads a flag CPython keeps: most names need no encoding to be measured.
    plain_names = (
        exchange.isascii()
        and routing_key.isascii()
        and content_type.isascii()
        and message_id.isascii()
        and max(len(exchange), len(routing_key), len(content_type), len(message_id))
        <= MAX_SHORT_STRING_BYTES
    )
    if not headers and not row.properties and message_id and plain_names:
        # The usual row, checked in well under a microsecond. Without headers the
        # properties take at most MAX_PROPERTIES_BYTES: under the 4096 bytes every
        # frame_max allows.
        return None, None
    if not message_id:
        # A returned message could not be told from the others without its id.
        return "message_id: is empty; give the row a message id", None
    if not plain_names:
        problem = (
            short_string_problem("message_id", message_id)
            or short_string_problem("exchange", exchange)
            or short_string_problem("routing_key", routing_key)
            or short_string_problem("content_type", content_type)
        )
        if problem is not None:
            return problem, None
    properties = row.properties
    if isinstance(properties, UnreadableHeaders):
        return f"properties: {properties.reason}", None
    problem = stored_problem(properties)
    if problem is not None:
        return problem, None
    if isinstance(headers, UnreadableHeaders):
        return f"headers: {headers.reason}", None
    if not isinstance(headers, Mapping):
        return f"headers: expected a JSON object, got a JSON {type(headers).__name__}", None
    if not headers and not properties:
        return None, None
    try:
        table = header_types.table_from_json(headers) if headers else None
        headers_bytes = table_size(table) if table is not None else 0
    except UnencodableError as exc:
        return f"headers: {exc}", None
    size = content_header_frame_bytes(
        content_type=row.content_type,
        message_id=row.message_id,
        headers_bytes=headers_bytes,
        properties_bytes=properties_bytes(properties),
    )
    if frame_max and size > frame_max:
        return (
            f"headers: the message's properties take {size} bytes once AMQP-encoded, over "
            f"the connection's frame_max of {frame_max} bytes; put large data in the payload "
            "(or raise frame_max on the broker)"
        ), None
    return None, table


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
