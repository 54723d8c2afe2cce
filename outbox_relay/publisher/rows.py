"""How a row becomes an AMQP message: whether AMQP or the broker would refuse it before
it is sent, the header table it goes with, and its properties."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import pika.exceptions
from pika.spec import BasicProperties

from outbox_relay.message import BROKER_MAX_MESSAGE_BYTES, OutboxRow, amqp_check, amqp_problem
from outbox_relay.relay.outcome import Outcome, Reason

PERSISTENT = 2

# What pika raises when a message's properties cannot be encoded as AMQP fields.
UNENCODABLE = (
    struct.error,
    TypeError,
    ValueError,
    pika.exceptions.ShortStringTooLong,
    pika.exceptions.UnsupportedAMQPFieldException,
)


def unencodable(row: OutboxRow, exc: Exception) -> Outcome:
    """The failure of a row pika could not encode (one of UNENCODABLE)."""
    reason = amqp_problem(row, frame_max=0) or f"{type(exc).__name__}: {exc}"
    return Outcome.failed(f"cannot be encoded as an AMQP message: {reason}", Reason.UNENCODABLE)


def refusal(row: OutboxRow, *, frame_max: int) -> Outcome | None:
    """The failure of a row that AMQP or every RabbitMQ refuses, known before it is sent
    (see :func:`outbox_relay.message.amqp_problem`), or None. Such a row never reaches
    the broker, which would close the channel or, for properties over ``frame_max``,
    the whole connection. A body under 512 MiB but over the broker's own
    ``max_message_size`` (not readable over AMQP) is refused by the broker, with the
    channel, and blamed by its size (see blame_channel_close)."""
    return checked(row, frame_max=frame_max)[0]


def checked(row: OutboxRow, *, frame_max: int) -> tuple[Outcome | None, dict[str, Any] | None]:
    """:func:`refusal`, and the header table to send when there is none (None for a row
    without headers): the check converts the table, and the send reuses it."""
    try:
        problem, table = amqp_check(row, frame_max=frame_max)
    except Exception as exc:  # noqa: BLE001 - a row no check foresaw fails alone, never the relay
        problem, table = f"{type(exc).__name__}: {exc}", None
    if problem is not None:
        return Outcome.failed(
            f"cannot be encoded as an AMQP message: {problem}", Reason.UNENCODABLE
        ), None
    if len(row.payload) > BROKER_MAX_MESSAGE_BYTES:
        return Outcome.failed(
            f"the payload is {len(row.payload)} bytes, over the {BROKER_MAX_MESSAGE_BYTES} "
            "bytes RabbitMQ accepts in any message: publish a reference to the data",
            Reason.TOO_LARGE,
        ), None
    return None, table


def properties(row: OutboxRow, headers: dict[str, Any] | None) -> BasicProperties:
    """The AMQP properties ``row`` goes out with, ``headers`` as its header table (from
    :func:`checked`). Persistent, with the row's message id and creation time."""
    # pika's BasicProperties.__init__ carries no annotations
    return BasicProperties(  # type: ignore[no-untyped-call]
        content_type=row.content_type,
        delivery_mode=PERSISTENT,
        message_id=row.message_id,
        # AMQP timestamps are unsigned: a row from before 1970 says 0.
        timestamp=max(0, int(row.created_at.timestamp())),
        headers=headers,
        # Checked by refusal(): only the properties of PROPERTY_NAMES.
        **(row.properties if isinstance(row.properties, Mapping) else {}),
    )
