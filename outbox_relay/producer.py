"""The producer API: write messages into the outbox inside the caller's transaction.

``publish`` never commits, rolls back or talks to the broker: the message becomes real
when the caller commits, and vanishes if it rolls back. It accepts psycopg 3 connections
and cursors, and SQLAlchemy sessions and connections that use the psycopg driver; the
async twins take their async counterparts. All of them share one validation path
(:func:`outbox_relay.message.new_message`) and one statement.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from outbox_relay.errors import InvalidMessageError
from outbox_relay.message import DEFAULT_LIMITS, Limits, NewMessage, new_message
from outbox_relay.store import writer
from outbox_relay.store.sqlfiles import validate_schema_name
from outbox_relay.tracing import with_trace_context

DEFAULT_SCHEMA = "public"


@dataclass(frozen=True)
class Message:
    """One message for :func:`publish_many`; the fields are ``publish``'s arguments."""

    exchange: str
    routing_key: str
    payload: object
    headers: Mapping[str, object] | None = None
    message_id: uuid.UUID | str | None = None
    partition_key: str | None = None
    delay: float | dt.timedelta | None = None
    content_type: str | None = None


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
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> uuid.UUID:
    """Insert one message into ``<schema>.outbox`` in the transaction open on ``conn``.

    ``conn`` is a psycopg ``Connection`` or ``Cursor``, or a SQLAlchemy ``Session`` or
    ``Connection`` on the psycopg driver. ``payload`` is a JSON-serialisable object, or
    bytes with ``content_type``. ``partition_key`` orders messages: rows with the same
    key are published in the order they were written. ``delay`` (seconds or a
    timedelta) holds the message back. ``limits`` bounds the payload and headers
    (:class:`Limits`; the defaults suit RabbitMQ's). Returns the message id (a
    time-ordered UUID unless one is given). Raises :class:`InvalidMessageError` before
    writing anything.
    """
    message = new_message(
        exchange=exchange,
        routing_key=routing_key,
        payload=payload,
        headers=with_trace_context(headers),
        message_id=message_id,
        partition_key=partition_key,
        delay=delay,
        content_type=content_type,
        limits=limits,
    )
    _write(conn, [message], schema=schema)
    return message.message_id


def publish_many(
    conn: object,
    messages: Iterable[Message],
    *,
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> list[uuid.UUID]:
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
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> uuid.UUID:
    """:func:`publish` for psycopg ``AsyncConnection``/``AsyncCursor`` and SQLAlchemy's
    ``AsyncSession``/``AsyncConnection``."""
    message = new_message(
        exchange=exchange,
        routing_key=routing_key,
        payload=payload,
        headers=with_trace_context(headers),
        message_id=message_id,
        partition_key=partition_key,
        delay=delay,
        content_type=content_type,
        limits=limits,
    )
    await _write_async(conn, [message], schema=schema)
    return message.message_id


async def publish_many_async(
    conn: object,
    messages: Iterable[Message],
    *,
    schema: str = DEFAULT_SCHEMA,
    limits: Limits = DEFAULT_LIMITS,
) -> list[uuid.UUID]:
    """:func:`publish_many` for async connections."""
    built = _build_all(messages, limits)
    if built:
        await _write_async(conn, built, schema=schema)
    return [m.message_id for m in built]


def _build_all(messages: Iterable[Message], limits: Limits) -> list[NewMessage]:
    built = []
    for index, message in enumerate(messages):
        if not isinstance(message, Message):
            raise InvalidMessageError(
                f"messages[{index}]: expected outbox_relay.Message, got {type(message).__name__}"
            )
        try:
            built.append(
                new_message(
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    payload=message.payload,
                    headers=with_trace_context(message.headers),
                    message_id=message.message_id,
                    partition_key=message.partition_key,
                    delay=message.delay,
                    content_type=message.content_type,
                    limits=limits,
                )
            )
        except InvalidMessageError as exc:
            raise InvalidMessageError(f"messages[{index}]: {exc}") from exc
    return built


def _write(conn: object, messages: Sequence[NewMessage], *, schema: str) -> None:
    _check_schema(schema)
    target = _sync_target(conn)
    writer.insert_messages(target, messages, schema=schema)


async def _write_async(conn: object, messages: Sequence[NewMessage], *, schema: str) -> None:
    _check_schema(schema)
    target = await _async_target(conn)
    await writer.insert_messages_async(target, messages, schema=schema)


def _check_schema(schema: str) -> None:
    try:
        validate_schema_name(schema)
    except ValueError as exc:
        raise InvalidMessageError(f"schema: {exc}") from exc


def _sync_target(conn: object) -> writer.SyncTarget:
    if writer.is_sync_target(conn):
        return conn  # type: ignore[return-value]
    if writer.is_async_target(conn):
        raise InvalidMessageError(
            "conn: an async connection was passed to publish(); use publish_async()"
        )
    if _is_sqlalchemy(conn):
        # Session.connection() joins (or begins) the session's transaction.
        sa_conn: Any = conn.connection() if hasattr(conn, "get_bind") else conn  # type: ignore[attr-defined]
        driver = sa_conn.connection.driver_connection
        if writer.is_sync_target(driver):
            return driver  # type: ignore[no-any-return]
        raise _unsupported_driver(driver)
    raise _unsupported(conn)


async def _async_target(conn: object) -> writer.AsyncTarget:
    if writer.is_async_target(conn):
        return conn  # type: ignore[return-value]
    if writer.is_sync_target(conn):
        raise InvalidMessageError(
            "conn: a sync connection was passed to publish_async(); use publish()"
        )
    if _is_sqlalchemy(conn):
        sa_conn: Any = await conn.connection() if hasattr(conn, "get_bind") else conn  # type: ignore[attr-defined]
        raw = await sa_conn.get_raw_connection()
        driver = raw.driver_connection
        if writer.is_async_target(driver):
            return driver  # type: ignore[no-any-return]
        raise _unsupported_driver(driver)
    raise _unsupported(conn)


def _is_sqlalchemy(conn: object) -> bool:
    return type(conn).__module__.startswith("sqlalchemy.")


def _unsupported_driver(driver: object) -> InvalidMessageError:
    return InvalidMessageError(
        f"conn: SQLAlchemy is using the {type(driver).__module__} driver; outbox-relay needs "
        "psycopg 3: create the engine with a 'postgresql+psycopg://' URL"
    )


def _unsupported(conn: object) -> InvalidMessageError:
    return InvalidMessageError(
        f"conn: {type(conn).__name__} is not supported; pass a psycopg 3 Connection or Cursor, "
        "or a SQLAlchemy Session or Connection on the psycopg driver"
    )
