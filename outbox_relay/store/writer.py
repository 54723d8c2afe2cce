"""Inserting messages on the application's own connection, inside its transaction.

One statement per call: plain VALUES for one message, arrays through ``unnest`` for many,
so a batch costs one round trip. The sync and async paths share :func:`_statement`;
only the ``execute`` call differs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import pq, sql

from outbox_relay.errors import InvalidMessageError, StoreError
from outbox_relay.message import NewMessage
from outbox_relay.store.sqlfiles import Queries

SyncTarget = psycopg.Connection[Any] | psycopg.Cursor[Any]
AsyncTarget = psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any]


def is_sync_target(target: object) -> bool:
    return isinstance(target, (psycopg.Connection, psycopg.Cursor))


def is_async_target(target: object) -> bool:
    return isinstance(target, (psycopg.AsyncConnection, psycopg.AsyncCursor))


def insert_messages(target: SyncTarget, messages: Sequence[NewMessage], *, schema: str) -> None:
    query, params = _statement(target, messages, schema=schema)
    try:
        target.execute(query, params)
    except psycopg.Error as exc:
        raise StoreError(f"inserting into {schema}.outbox failed: {exc}") from exc


async def insert_messages_async(
    target: AsyncTarget, messages: Sequence[NewMessage], *, schema: str
) -> None:
    query, params = _statement(target, messages, schema=schema)
    try:
        await target.execute(query, params)
    except psycopg.Error as exc:
        raise StoreError(f"inserting into {schema}.outbox failed: {exc}") from exc


def _statement(
    target: SyncTarget | AsyncTarget, messages: Sequence[NewMessage], *, schema: str
) -> tuple[sql.Composed, dict[str, Any]]:
    _check_in_transaction(target)
    if len(messages) == 1:
        # The usual call, publish(): plain VALUES costs the server less than unnest.
        (m,) = messages
        return _insert_query(schema, "insert_message"), {
            "message_id": m.message_id,
            "exchange": m.exchange,
            "routing_key": m.routing_key,
            "payload": m.payload,
            "content_type": m.content_type,
            "headers": m.headers_json,
            "partition_key": m.partition_key,
            "delay_s": m.delay_s,
        }
    return _insert_query(schema, "insert_messages"), {
        "message_ids": [m.message_id for m in messages],
        "exchanges": [m.exchange for m in messages],
        "routing_keys": [m.routing_key for m in messages],
        "payloads": [m.payload for m in messages],
        "content_types": [m.content_type for m in messages],
        "headers": [m.headers_json for m in messages],
        "partition_keys": [m.partition_key for m in messages],
        "delays": [m.delay_s for m in messages],
    }


@functools.lru_cache(maxsize=64)
def _insert_query(schema: str, name: str) -> sql.Composed:
    return Queries("producer", schema=schema)[name]


def _check_in_transaction(target: SyncTarget | AsyncTarget) -> None:
    conn = (
        target.connection if isinstance(target, (psycopg.Cursor, psycopg.AsyncCursor)) else target
    )
    status = conn.info.transaction_status
    if status == pq.TransactionStatus.INERROR:
        raise InvalidMessageError(
            "conn: the transaction has already failed; roll it back before publishing"
        )
    if conn.autocommit and status == pq.TransactionStatus.IDLE:
        raise InvalidMessageError(
            "conn: the connection is in autocommit mode outside a transaction, so the message "
            "would commit apart from your domain write; publish inside `with conn.transaction():`"
            " or use a connection with autocommit off"
        )
