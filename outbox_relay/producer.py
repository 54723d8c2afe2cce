"""The producer API: write messages into the outbox inside the caller's transaction.

``publish`` never commits, rolls back or talks to the broker: the message becomes real
when the caller commits, and vanishes if it rolls back. It accepts psycopg 3 connections
and cursors, SQLAlchemy sessions and connections on the psycopg driver (subclasses such
as SQLModel's included), and Django's connections and cursors inside
``transaction.atomic()`` (:mod:`outbox_relay.store.targets`); the async twins take the
async counterparts. All of them share one validation path
(:func:`outbox_relay.encoding.new_message`) and one statement.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence

from outbox_relay.encoding import new_message
from outbox_relay.errors import InvalidMessageError
from outbox_relay.message import DEFAULT_LIMITS, Limits, NewMessage, OutboxMessage
from outbox_relay.store import targets, writer
from outbox_relay.store.sqlfiles import validate_schema_name
from outbox_relay.tracing import with_trace_context

DEFAULT_SCHEMA = "public"


def publish(
    conn: object,
    *,
    exchange: str,
    routing_key: str,
    payload: object,
    headers: Mapping[str, object] | None = None,
    message_id: uuid.UUID | str | None = None,
    partition_key: str | None = None,
    delay: float | dt.timedelta | None = None,
    content_type: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    priority: int | None = None,
    expiration: float | dt.timedelta | None = None,
    type: str | None = None,
    app_id: str | None = None,
    content_encoding: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> str:
    """Insert one message into ``<schema>.outbox`` in the transaction open on ``conn``.

    ``conn`` is a psycopg ``Connection`` or ``Cursor``; a SQLAlchemy ``Session``,
    ``scoped_session`` or ``Connection`` on the psycopg driver (subclasses too); or Django's
    ``django.db.connection``, ``connections[alias]`` or a cursor of theirs, inside
    ``transaction.atomic()``. ``payload`` is a JSON-serialisable object, or
    bytes with ``content_type``. ``partition_key`` orders messages: rows with the same
    key are published in the order they were written. ``delay`` (seconds or a
    timedelta) holds the message back. ``correlation_id``, ``reply_to``, ``priority``
    (0-255), ``expiration`` (a time to live: seconds or a timedelta), ``type``,
    ``app_id`` and ``content_encoding`` are sent as the AMQP properties of those names.
    ``limits`` bounds the payload and headers (:class:`Limits`; the defaults suit
    RabbitMQ's). ``message_id`` is any text of 1 to 255 bytes (or a UUID); by default a
    time-ordered UUID (version 7). Returns the message id as the str sent in the AMQP
    ``message_id`` property.
    Raises :class:`InvalidMessageError` before writing anything.
    """
    message = _build(
        OutboxMessage(
            exchange=exchange,
            routing_key=routing_key,
            payload=payload,
            headers=headers,
            message_id=message_id,
            partition_key=partition_key,
            delay=delay,
            content_type=content_type,
            correlation_id=correlation_id,
            reply_to=reply_to,
            priority=priority,
            expiration=expiration,
            type=type,
            app_id=app_id,
            content_encoding=content_encoding,
        ),
        limits,
    )
    _write(conn, [message], schema=schema)
    return message.message_id


def publish_many(
    conn: object,
    messages: Iterable[OutboxMessage],
    *,
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    """Insert several messages in one round trip; all are validated before any is written."""
    built = _build_all(messages, limits)
    if built:
        _write(conn, built, schema=schema)
    return [m.message_id for m in built]


async def publish_async(
    conn: object,
    *,
    exchange: str,
    routing_key: str,
    payload: object,
    headers: Mapping[str, object] | None = None,
    message_id: uuid.UUID | str | None = None,
    partition_key: str | None = None,
    delay: float | dt.timedelta | None = None,
    content_type: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    priority: int | None = None,
    expiration: float | dt.timedelta | None = None,
    type: str | None = None,
    app_id: str | None = None,
    content_encoding: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> str:
    """:func:`publish` for psycopg ``AsyncConnection``/``AsyncCursor`` and SQLAlchemy's
    ``AsyncSession``/``async_scoped_session``/``AsyncConnection`` (subclasses too)."""
    message = _build(
        OutboxMessage(
            exchange=exchange,
            routing_key=routing_key,
            payload=payload,
            headers=headers,
            message_id=message_id,
            partition_key=partition_key,
            delay=delay,
            content_type=content_type,
            correlation_id=correlation_id,
            reply_to=reply_to,
            priority=priority,
            expiration=expiration,
            type=type,
            app_id=app_id,
            content_encoding=content_encoding,
        ),
        limits,
    )
    await _write_async(conn, [message], schema=schema)
    return message.message_id


async def publish_many_async(
    conn: object,
    messages: Iterable[OutboxMessage],
    *,
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    """:func:`publish_many` for async connections."""
    built = _build_all(messages, limits)
    if built:
        await _write_async(conn, built, schema=schema)
    return [m.message_id for m in built]


def _build_all(messages: Iterable[OutboxMessage], limits: Limits) -> list[NewMessage]:
    built = []
    for index, message in enumerate(messages):
        if not isinstance(message, OutboxMessage):
            raise InvalidMessageError(
                f"messages[{index}]: expected outbox_relay.OutboxMessage, "
                f"got {type(message).__name__}"
            )
        try:
            built.append(_build(message, limits))
        except InvalidMessageError as exc:
            raise InvalidMessageError(f"messages[{index}]: {exc}") from exc
    return built


def _build(message: OutboxMessage, limits: Limits) -> NewMessage:
    headers = with_trace_context(message.headers)
    if headers is not message.headers:
        message = dataclasses.replace(message, headers=headers)
    return new_message(message, limits)


def _write(conn: object, messages: Sequence[NewMessage], *, schema: str) -> None:
    _check_schema(schema)
    target = targets.sync_target(conn)
    writer.insert_messages(target, messages, schema=schema)


async def _write_async(conn: object, messages: Sequence[NewMessage], *, schema: str) -> None:
    _check_schema(schema)
    target = await targets.async_target(conn)
    await writer.insert_messages_async(target, messages, schema=schema)


def _check_schema(schema: str) -> None:
    try:
        validate_schema_name(schema)
    except ValueError as exc:
        raise InvalidMessageError(f"schema: {exc}") from exc
