"""The AMQP basic properties a producer sets beside the payload: validated, stored, checked.

Pure: no I/O. ``publish`` takes them as keyword arguments (``correlation_id``,
``reply_to``, ``priority``, ``expiration``, ``type``, ``app_id``, ``content_encoding``);
they are stored in the outbox's nullable ``properties`` jsonb column, as one JSON object
with AMQP's property names and the values the relay sends (NULL when none is set, which
most messages are: one column costs a producer less than seven). ``expiration`` is
stored as RabbitMQ takes it, a string of integer milliseconds.

The relay reads the column back as written, perhaps by a plain SQL writer:
:func:`stored_problem` names a value AMQP or RabbitMQ would refuse (the broker closes the
channel over an invalid ``expiration``), so that row fails alone.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from outbox_relay.amqp_fields import (
    OPTIONAL_TEXT_PROPERTIES,
    PRIORITY_BYTES,
    short_string_problem,
    shown,
)
from outbox_relay.errors import InvalidMessageError

if TYPE_CHECKING:
    from outbox_relay.message import OutboxMessage

PROPERTY_NAMES = frozenset((*OPTIONAL_TEXT_PROPERTIES, "priority"))
MAX_PRIORITY = 255  # an AMQP octet; RabbitMQ queues honour up to x-max-priority (<= 255)
# RabbitMQ takes an expiration up to 2**32 - 1 ms in some versions and refuses larger
# ones; 49 days is far past any sensible time to live of a message waiting in a queue.
MAX_EXPIRATION_MS = 2**32 - 1


def encode_properties(message: OutboxMessage) -> str | None:
    """The properties ``message`` sets, as the JSON text stored in the outbox; None when
    it sets none.

    Raises :class:`InvalidMessageError` naming the argument and the fix.
    """
    values: dict[str, object] = {}
    for name, value in (
        ("content_encoding", message.content_encoding),
        ("correlation_id", message.correlation_id),
        ("reply_to", message.reply_to),
        ("type", message.type),
        ("app_id", message.app_id),
    ):
        if value is not None:
            _check_text(name, value)
            values[name] = value
    if message.priority is not None:
        values["priority"] = _priority(message.priority)
    if message.expiration is not None:
        values["expiration"] = expiration_ms(message.expiration)
    if not values:
        return None
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def expiration_ms(expiration: float | dt.timedelta) -> str:
    """A time to live (seconds or a timedelta) as RabbitMQ takes it: a string of integer
    milliseconds, rounded to the nearest. 0 expires the message unless a consumer is ready
    for it at once."""
    seconds = expiration.total_seconds() if isinstance(expiration, dt.timedelta) else expiration
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidMessageError(
            f"expiration: expected seconds or a timedelta, got {type(expiration).__name__}"
        )
    # Compared before it is converted: an int too large for a float is refused, not an error.
    if not 0 <= seconds <= MAX_EXPIRATION_MS / 1000:
        raise InvalidMessageError(
            f"expiration: {shown(seconds)} is not between 0 and "
            f"{MAX_EXPIRATION_MS // 1000} seconds (the largest time to live RabbitMQ takes, "
            "about 49 days)"
        )
    return str(round(seconds * 1000))


def _priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidMessageError(
            f"priority: expected an int from 0 to {MAX_PRIORITY}, got {type(priority).__name__}"
        )
    if not 0 <= priority <= MAX_PRIORITY:
        raise InvalidMessageError(
            f"priority: {shown(priority)} is not from 0 to {MAX_PRIORITY}; RabbitMQ treats "
            "priorities above a queue's x-max-priority (at most 255, 10 recommended) as that "
            "maximum"
        )
    return priority


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{name}: expected str, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidMessageError(
            f"{name}: holds a NUL character, which PostgreSQL cannot store; remove it"
        )
    problem = short_string_problem(name, value)
    if problem is not None:
        raise InvalidMessageError(f"{name}: {problem.removeprefix(name + ' ')}")


def stored_problem(properties: object) -> str | None:
    """Why a claimed row's stored properties cannot be sent as AMQP properties RabbitMQ
    accepts, or None: anything ``publish`` would not have written."""
    if not isinstance(properties, Mapping):
        return f"properties: expected a JSON object, got a JSON {type(properties).__name__}"
    for name, value in properties.items():
        problem = _stored_value_problem(name, value)
        if problem is not None:
            return f"properties: {problem}"
    return None


def _stored_value_problem(name: str, value: object) -> str | None:
    if name not in PROPERTY_NAMES:
        return (
            f"{shown(name)} is not a property the relay sets; use "
            f"{', '.join(sorted(PROPERTY_NAMES))}"
        )
    if name == "priority":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
            return f"priority {shown(value)} is not an int from 0 to {MAX_PRIORITY}"
        return None
    if not isinstance(value, str):
        return f"{name} {shown(value)} is not a string"
    problem = short_string_problem(name, value)
    if (
        problem is None
        and name == "expiration"
        and not (value.isascii() and value.isdigit() and int(value) <= MAX_EXPIRATION_MS)
    ):
        return (
            f"expiration {shown(value)} is not a string of integer milliseconds from 0 "
            f"to {MAX_EXPIRATION_MS} (RabbitMQ would close the channel over it)"
        )
    return problem


def properties_bytes(properties: Mapping[str, Any]) -> int:
    """Bytes the (valid) ``properties`` add to a message's content-header frame."""
    size = 0
    for name, value in properties.items():
        if name == "priority":
            size += PRIORITY_BYTES
        else:
            size += 1 + len(value.encode("utf-8"))
    return size
