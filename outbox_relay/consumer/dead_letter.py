"""A parked message as the person on call sees it, and which ones an action picks. Pure.

The consumer parks a message with its failure in our own headers (see
:mod:`outbox_relay.consumer.failure`); :func:`dead_letter` reads them back, and
:func:`replay_headers` clears them for a fresh set of attempts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from outbox_relay.consumer.failure import (
    DROPPED_HEADERS_HEADER,
    ERROR_MESSAGE_HEADER,
    ERROR_TRACE_HEADER,
    ERROR_TYPE_HEADER,
    FAILED_QUEUE_HEADER,
    RAW_PROPERTIES_HEADER,
    RAW_PROPERTIES_SIZE_HEADER,
    wire_value,
)
from outbox_relay.consumer.message import (
    ATTEMPT_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    attempts_made,
    utc_datetime,
)
from outbox_relay.topology import QueueSpec, RetryPolicy, parking_queue_name

# Cleared on replay: the message starts over. Where it was first published stays.
FAILURE_HEADERS = (
    ATTEMPT_HEADER,
    ERROR_TYPE_HEADER,
    ERROR_MESSAGE_HEADER,
    ERROR_TRACE_HEADER,
    FAILED_QUEUE_HEADER,
    RAW_PROPERTIES_HEADER,
    RAW_PROPERTIES_SIZE_HEADER,
    DROPPED_HEADERS_HEADER,
)
_OURS = (*FAILURE_HEADERS, ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_EXCHANGE_HEADER)
# The suffix the topology gives a queue's parking lot, e.g. "billing.orders.parking".
_PARKING_SUFFIX = str(
    parking_queue_name(QueueSpec(name="q", retry=RetryPolicy(delays_ms=(1,), max_attempts=1)))
    or ".parking"
)[len("q") :]


@dataclass(frozen=True)
class DeadLetter:
    """A parked message: where it came from, why it failed, how often it was tried."""

    message_id: str | None
    routing_key: str
    exchange: str
    failed_queue: str | None
    error_type: str
    error_message: str
    error_trace: str
    attempts: int
    published_at: dt.datetime | None
    content_type: str | None
    body: bytes = b""
    other_headers: Mapping[str, Any] = field(default_factory=dict)
    # Properties pika could not decode (base64, maybe cut) and their full size; the names
    # of the message's own headers dropped to fit a frame.
    raw_properties: str | None = None
    raw_properties_size: int | None = None
    dropped_headers: tuple[str, ...] = ()

    def age_s(self, now: dt.datetime) -> float | None:
        """Seconds since the message was first published (None without a timestamp)."""
        if self.published_at is None:
            return None
        return max(0.0, (now - self.published_at).total_seconds())

    def summary(self, now: dt.datetime) -> dict[str, Any]:
        """What `dead-letters list --json` prints: no traceback, no body."""
        age = self.age_s(now)
        return {
            "message_id": self.message_id,
            "routing_key": self.routing_key,
            "exchange": self.exchange,
            "failed_queue": self.failed_queue,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "age_s": None if age is None else round(age, 3),
        }

    def details(self, now: dt.datetime, *, payload: bool = False) -> dict[str, Any]:
        """What `dead-letters show` prints: the summary, the traceback, the other headers,
        and the body when asked for (it may hold personal data)."""
        data = self.summary(now)
        data.update(
            {
                "published_at": None
                if self.published_at is None
                else self.published_at.isoformat(),
                "content_type": self.content_type,
                "error_trace": self.error_trace,
                "headers": {
                    _jsonable_key(key): _jsonable(value)
                    for key, value in self.other_headers.items()
                },
            }
        )
        if self.raw_properties is not None:
            data["raw_properties"] = self.raw_properties
            data["raw_properties_size"] = self.raw_properties_size
        if self.dropped_headers:
            data["dropped_headers"] = list(self.dropped_headers)
        if payload:
            data["payload"] = self.body.decode("utf-8", errors="replace")
        return data


def dead_letter(
    *,
    body: bytes,
    routing_key: str,
    exchange: str,
    message_id: object,
    content_type: object,
    timestamp: int | None,
    headers: Mapping[Any, Any] | None,
) -> DeadLetter:
    """Decode a parked delivery. ``routing_key`` and ``exchange`` are the delivery's own
    (the parking lot's name and the default exchange): the headers say where it began.
    Whatever pika decoded is taken: short strings that are not UTF-8 (bytes), timestamps
    past year 9999 (no ``published_at``), header values of any AMQP type."""
    headers = headers or {}
    raw = headers.get(RAW_PROPERTIES_HEADER)
    raw_size = headers.get(RAW_PROPERTIES_SIZE_HEADER)
    dropped = headers.get(DROPPED_HEADERS_HEADER)
    return DeadLetter(
        message_id=_text(message_id) if message_id is not None else None,
        routing_key=_text(headers.get(ORIGINAL_ROUTING_KEY_HEADER)) or routing_key,
        exchange=_text(headers.get(ORIGINAL_EXCHANGE_HEADER)) or exchange,
        failed_queue=_text(headers.get(FAILED_QUEUE_HEADER)) or None,
        error_type=_text(headers.get(ERROR_TYPE_HEADER)),
        error_message=_text(headers.get(ERROR_MESSAGE_HEADER)),
        error_trace=_text(headers.get(ERROR_TRACE_HEADER)),
        attempts=attempts_made(headers),
        published_at=utc_datetime(timestamp) if timestamp is not None else None,
        content_type=_text(content_type) if content_type is not None else None,
        body=body,
        other_headers={k: v for k, v in headers.items() if k not in _OURS},
        raw_properties=_text(raw) if raw is not None else None,
        raw_properties_size=raw_size if isinstance(raw_size, int) else None,
        dropped_headers=tuple(_text(name) for name in dropped) if isinstance(dropped, list) else (),
    )


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which parked messages an action picks; empty picks all. ``error_type`` matches the
    full name or its last part (``CardDeclined`` matches ``billing.errors.CardDeclined``)."""

    message_ids: frozenset[str] = frozenset()
    error_type: str | None = None
    routing_key: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.message_ids and letter.message_id not in self.message_ids:
            return False
        if self.error_type and not (
            letter.error_type == self.error_type
            or letter.error_type.endswith(f".{self.error_type}")
        ):
            return False
        return not (self.routing_key and letter.routing_key != self.routing_key)

    def describe(self) -> str:
        parts = []
        if self.message_ids:
            parts.append(f"message ids {', '.join(sorted(self.message_ids))}")
        if self.error_type:
            parts.append(f"error type {self.error_type!r}")
        if self.routing_key:
            parts.append(f"routing key {self.routing_key!r}")
        return "messages with " + " and ".join(parts) if parts else "all messages"


def parking_lot_for(queue: str) -> str:
    """The parking lot of ``queue``, or ``queue`` itself when it is one."""
    return queue if queue.endswith(_PARKING_SUFFIX) else f"{queue}{_PARKING_SUFFIX}"


def replay_target(letter: DeadLetter, parking_lot: str) -> str:
    """The queue a replayed message goes back to: the one that failed it, else the queue
    whose parking lot this is."""
    if letter.failed_queue:
        return letter.failed_queue
    if parking_lot.endswith(_PARKING_SUFFIX):
        return parking_lot[: -len(_PARKING_SUFFIX)]
    return parking_lot


def replay_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers of a replayed copy: the failure cleared, the attempt count reset, the
    original routing key and exchange kept (handlers see them as ``message.routing_key``),
    every value in a form AMQP can carry."""
    return {
        k: wire_value(v)
        for k, v in (headers or {}).items()
        if k not in FAILURE_HEADERS and k != "x-death"
    }


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _jsonable_key(key: object) -> str:
    return key if isinstance(key, str) else repr(key)


def _jsonable(value: object) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {_jsonable_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)
