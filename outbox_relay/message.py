"""What a message is: as given to ``publish``, as written, and as claimed by the relay;
what ``publish`` accepts (:class:`Limits`), and whether a claimed row can travel as AMQP.

Pure: no I/O. :mod:`outbox_relay.encoding` checks and encodes an :class:`OutboxMessage`
into a :class:`NewMessage`.
"""

from __future__ import annotations

import datetime as dt
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
    table_size,
)
from outbox_relay.properties import properties_bytes, stored_problem

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


@dataclass(frozen=True)
class OutboxMessage:
    """One message for :func:`~outbox_relay.publish_many`; the fields are ``publish``'s
    arguments."""

    exchange: str
    routing_key: str
    payload: object
    headers: Mapping[str, object] | None = None
    message_id: uuid.UUID | str | None = None
    partition_key: str | None = None
    delay: float | dt.timedelta | None = None
    content_type: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    expiration: float | dt.timedelta | None = None
    type: str | None = None
    app_id: str | None = None
    content_encoding: str | None = None


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
