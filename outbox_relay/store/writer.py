"""Inserting messages on the application's own connection, inside its transaction.

One statement per call: plain VALUES for one message, arrays through ``unnest`` for many,
so a batch costs one round trip. While a relay may be waiting for a NOTIFY, the same
statement also calls ``outbox_wake()`` (it notifies only if a relay waits, and says
whether one may); after it has said no, bare inserts follow for a few milliseconds
(:class:`outbox_relay.wakeup.FlagSeen`). The sync and async paths share
:func:`_statement`; only the ``execute`` call differs.
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
from outbox_relay.wakeup import FlagSeen

SyncTarget = psycopg.Connection[Any] | psycopg.Cursor[Any]
AsyncTarget = psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any]


def is_sync_target(target: object) -> bool:
    return isinstance(target, (psycopg.Connection, psycopg.Cursor))


def is_async_target(target: object) -> bool:
    return isinstance(target, (psycopg.AsyncConnection, psycopg.AsyncCursor))


# What this process's producers last saw of the relays' wake-up flag.
FLAG_SEEN = FlagSeen()
FlagKey = tuple[str, int, str, str]  # host, port, database, schema


def insert_messages(target: SyncTarget, messages: Sequence[NewMessage], *, schema: str) -> None:
    query, params, flag = _statement(target, messages, schema=schema)
    try:
        cursor = target.execute(query, params)
        if flag is not None:
            _saw(flag, cursor.fetchone())
    except psycopg.Error as exc:
        raise StoreError(f"inserting into {schema}.outbox failed: {exc}") from exc


async def insert_messages_async(
    target: AsyncTarget, messages: Sequence[NewMessage], *, schema: str
) -> None:
    query, params, flag = _statement(target, messages, schema=schema)
    try:
        cursor = await target.execute(query, params)
        if flag is not None:
            _saw(flag, await cursor.fetchone())
    except psycopg.Error as exc:
        raise StoreError(f"inserting into {schema}.outbox failed: {exc}") from exc


def _saw(flag: FlagKey, row: tuple[Any, ...] | None) -> None:
    FLAG_SEEN.saw(flag, relay_may_wait=row is None or bool(row[0]))


def _statement(
    target: SyncTarget | AsyncTarget, messages: Sequence[NewMessage], *, schema: str
) -> tuple[sql.Composed, dict[str, Any], FlagKey | None]:
    """The insert and its parameters, and the flag's key when the insert also looks at
    the wake-up flag."""
    conn = _connection(target)
    _check_in_transaction(conn)
    info = conn.info
    flag = (info.host, info.port, info.dbname, schema)
    name, params = _insert(messages)
    if not FLAG_SEEN.must_look(flag):
        return _insert_query(schema, name), params, None
    return _insert_and_wake_query(schema, name), params, flag


def _insert(messages: Sequence[NewMessage]) -> tuple[str, dict[str, Any]]:
    """The name of the insert statement and its parameters."""
    if len(messages) == 1:
        # The usual call, publish(): plain VALUES costs the server less than unnest.
        (m,) = messages
        return "insert_message", {
            "message_id": m.message_id,
            "exchange": m.exchange,
            "routing_key": m.routing_key,
            "payload": m.payload,
            "content_type": m.content_type,
            "headers": m.headers_json,
            "partition_key": m.partition_key,
            "delay_s": m.delay_s,
        }
    return "insert_messages", {
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


@functools.lru_cache(maxsize=64)
def _insert_and_wake_query(schema: str, name: str) -> sql.Composed:
    return sql.SQL("WITH inserted AS ({}) {}").format(
        _insert_query(schema, name), _insert_query(schema, "wake")
    )


def _connection(
    target: SyncTarget | AsyncTarget,
) -> psycopg.Connection[Any] | psycopg.AsyncConnection[Any]:
    if isinstance(target, (psycopg.Cursor, psycopg.AsyncCursor)):
        return target.connection
    return target


def _check_in_transaction(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> None:
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
