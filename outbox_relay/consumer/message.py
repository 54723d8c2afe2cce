"""What a handler receives: the decoded message and where it came from. Pure: no I/O."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from outbox_relay.consumer.errors import UndecodableMessageError
from outbox_relay.properties import MAX_PRIORITY

ATTEMPT_HEADER = "outbox-attempt"
ORIGINAL_ROUTING_KEY_HEADER = "outbox-original-routing-key"
ORIGINAL_EXCHANGE_HEADER = "outbox-original-exchange"
JSON_TYPES = ("application/json",)
# A larger count in a header is taken as this one, so that the attempt number (one more)
# still fits a 32-bit integer, in a handler's table as in AMQP.
MAX_ATTEMPT_COUNT = 2**31 - 2


@dataclass(frozen=True)
class Delivery:
    """A delivery as the broker handed it over, before decoding."""

    body: bytes
    exchange: str
    routing_key: str
    redelivered: bool
    message_id: str | None
    content_type: str | None
    headers: Mapping[str, Any]
    timestamp: int | None
    queue: str
    # Why the properties cannot be handed to a handler as they are (None: they can), and
    # the raw property bytes when pika could not decode them.
    problem: str | None = None
    raw_properties: bytes | None = None
    # The other basic properties, passed to the handler as they are (see Message).
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    type: str | None = None
    app_id: str | None = None
    content_encoding: str | None = None
    expiration: str | None = None
    user_id: str | None = None

    @classmethod
    def received(
        cls,
        *,
        body: bytes,
        exchange: object,
        routing_key: object,
        redelivered: bool,
        queue: str,
        message_id: object,
        content_type: object,
        headers: object,
        timestamp: object,
        undecodable: str | None = None,
        raw_properties: bytes | None = None,
        correlation_id: object = None,
        reply_to: object = None,
        priority: object = None,
        type: object = None,
        app_id: object = None,
        content_encoding: object = None,
        expiration: object = None,
        user_id: object = None,
    ) -> Delivery:
        """A delivery from the values pika decoded, whatever their types: a short string
        that is not UTF-8 arrives as bytes, and becomes a ``problem`` (the message is
        parked) when the consumer needs it as text. ``undecodable``: pika could not
        decode the properties at all (see :mod:`outbox_relay.consumer.lenient_frames`).
        The other properties are passed on as they are: text that is not UTF-8 shows
        U+FFFD in place of its bad bytes (the handler does not need them to take the
        message; copies republished on a retry or to the parking lot keep the original
        bytes), a priority that is not an octet is None."""
        problems = [undecodable] if undecodable else []
        texts: dict[str, str | None] = {}
        for name, value in (("message_id", message_id), ("content_type", content_type)):
            texts[name], problem = _text_property(name, value)
            if problem:
                problems.append(problem)
        return cls(
            body=body,
            exchange=_text(exchange, ""),
            routing_key=_text(routing_key, ""),
            redelivered=redelivered,
            message_id=texts["message_id"],
            content_type=texts["content_type"],
            headers=headers if isinstance(headers, Mapping) else {},
            timestamp=timestamp if isinstance(timestamp, int) else None,
            queue=queue,
            problem="; ".join(problems) or None,
            raw_properties=raw_properties,
            correlation_id=_optional_text(correlation_id),
            reply_to=_optional_text(reply_to),
            priority=_priority(priority),
            type=_optional_text(type),
            app_id=_optional_text(app_id),
            content_encoding=_optional_text(content_encoding),
            expiration=_optional_text(expiration),
            user_id=_optional_text(user_id),
        )


@dataclass(frozen=True)
class Message:
    """A message as a handler sees it.

    ``body`` is the decoded JSON value when the content type is JSON (``application/json``
    or ``application/*+json``), the raw bytes otherwise. ``routing_key`` and ``exchange``
    are where the message was first published, also after retries (which travel through
    the default exchange). ``attempt`` is 1 on the first delivery and grows with each retry;
    a redelivery after a crash keeps its number and has ``redelivered`` set.

    ``correlation_id``, ``reply_to``, ``priority``, ``type``, ``app_id``,
    ``content_encoding``, ``expiration`` and ``user_id`` are the AMQP properties of those
    names as published (None when absent); ``expiration`` as AMQP carries it, integer
    milliseconds as text (``"60000"``). A retried delivery has no ``expiration`` (it
    would fight the delay tier's TTL) and no ``user_id`` (the broker checks it against
    the consumer's login). A text property that is not UTF-8 shows U+FFFD in place of
    its bad bytes.
    """

    body: Any
    raw_body: bytes
    message_id: str | None
    routing_key: str
    exchange: str
    queue: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    attempt: int = 1
    redelivered: bool = False
    timestamp: dt.datetime | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    type: str | None = None
    app_id: str | None = None
    content_encoding: str | None = None
    expiration: str | None = None
    user_id: str | None = None


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def decode(delivery: Delivery, *, require_message_id: bool = False) -> Message:
    """The :class:`Message` of a delivery; raises UndecodableMessageError with the reason.

    ``require_message_id``: the inbox keys on it, so a handler with a transaction cannot
    take a message without one.
    """
    if delivery.problem:
        raise UndecodableMessageError(delivery.problem)
    if require_message_id and not delivery.message_id:
        raise UndecodableMessageError(
            "the message has no message_id, so the inbox cannot deduplicate it; publish "
            "with a message_id (outbox_relay.publish always sets one)"
        )
    body: Any = delivery.body
    if is_json(delivery.content_type):
        try:
            body = json.loads(delivery.body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise UndecodableMessageError(
                f"the body is not valid JSON although its content type is "
                f"{delivery.content_type!r}: {exc}"
            ) from exc
    headers = dict(delivery.headers)
    return Message(
        body=body,
        raw_body=delivery.body,
        message_id=delivery.message_id,
        routing_key=original_routing_key(delivery),
        exchange=original_exchange(delivery),
        queue=delivery.queue,
        headers=headers,
        content_type=delivery.content_type,
        attempt=attempts_made(headers) + 1,
        redelivered=delivery.redelivered,
        timestamp=_timestamp(delivery.timestamp),
        correlation_id=delivery.correlation_id,
        reply_to=delivery.reply_to,
        priority=delivery.priority,
        type=delivery.type,
        app_id=delivery.app_id,
        content_encoding=delivery.content_encoding,
        expiration=delivery.expiration,
        user_id=delivery.user_id,
    )


def _timestamp(seconds: int | None) -> dt.datetime | None:
    if seconds is None:
        return None
    moment = utc_datetime(seconds)
    if moment is None:
        raise UndecodableMessageError(
            f"the timestamp property {seconds} is not a time Python can represent (past "
            "year 9999); the publisher must send seconds since 1970-01-01 UTC"
        )
    return moment


def utc_datetime(seconds: int) -> dt.datetime | None:
    """``seconds`` since the epoch as a UTC datetime; None past what Python holds."""
    try:
        return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):  # each platform picks its own
        return None


def original_routing_key(delivery: Delivery) -> str:
    """The routing key the message was first published with (retries go by queue name)."""
    return _text(delivery.headers.get(ORIGINAL_ROUTING_KEY_HEADER), delivery.routing_key)


def original_exchange(delivery: Delivery) -> str:
    """The exchange the message was first published to."""
    return _text(delivery.headers.get(ORIGINAL_EXCHANGE_HEADER), delivery.exchange)


def attempts_made(headers: Mapping[str, Any]) -> int:
    """Failed attempts recorded in our own header; a missing or garbled header counts 0."""
    value = headers.get(ATTEMPT_HEADER)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        count = int(value) if value is not None else 0
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(0, count), MAX_ATTEMPT_COUNT)


def _text_property(name: str, value: object) -> tuple[str | None, str | None]:
    """A short-string property as text, and the problem when it is not UTF-8."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace"), (
            f"the {name} property is not valid UTF-8 ({value[:64]!r}); the publisher must "
            "send it as UTF-8 text"
        )
    return str(value), f"the {name} property is not text ({type(value).__name__})"


def _optional_text(value: object) -> str | None:
    if value is None:
        return None
    return _text(value, str(value))


def _priority(value: object) -> int | None:
    """pika's priority octet; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_PRIORITY else None


def _text(value: object, default: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else default
