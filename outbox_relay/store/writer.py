"""Inserting messages on the application's own connection, inside its transaction.

One statement per call: plain VALUES for one message, arrays through ``unnest`` for many,
so a batch costs one round trip. While a relay may be waiting for a NOTIFY, the same
statement also calls ``outbox_wake()`` (it notifies only if a relay waits, and says
whether one may); after it has said no, bare inserts follow for a few milliseconds
(:class:`outbox_relay.relay.wakeup.FlagSeen`). The sync and async paths share
:func:`_statement`; only the ``execute`` call differs.

On a connection that prepares statements (psycopg's default ``prepare_threshold``) the
first insert also asks, once per connection, whether a connection pooler answers (see
:mod:`outbox_relay.store.pooler`): behind one, the insert is never prepared, since the
next transaction may run on a server session that has another client's ``_pg3_0``.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.rows import tuple_row

from outbox_relay.errors import InvalidMessageError, StoreError
from outbox_relay.message import NewMessage
from outbox_relay.relay.wakeup import FlagSeen
from outbox_relay.store.sqlfiles import Queries

SyncTarget = psycopg.Connection[Any] | psycopg.Cursor[Any]
AsyncTarget = psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any]


# What this process's producers last saw of the relays' wake-up flag.
FLAG_SEEN = FlagSeen()
FlagKey = tuple[str, int, str, str]  # host, port, database, schema


@dataclass(frozen=True)
class _Statement:
    query: bytes
    params: dict[str, Any]
    flag: FlagKey | None  # set when the statement also looks at the wake-up flag
    looked_at: float

    def saw(self, flag: FlagKey, row: tuple[Any, ...] | None) -> None:
        may_wait = row is None or bool(row[0])
        FLAG_SEEN.saw(flag, relay_may_wait=may_wait, looked_at=self.looked_at)


def insert_messages(target: SyncTarget, messages: Sequence[NewMessage], *, schema: str) -> None:
    conn = target.connection if isinstance(target, psycopg.Cursor) else target
    with _translated(schema):
        statement = _statement(conn, messages, schema=schema)
        # A cursor of our own: the caller's row factory and result stay as they were.
        with conn.cursor(row_factory=tuple_row) as cursor:
            if conn.prepare_threshold is not None and conn not in _POOLED:
                _saw_backend(conn, cursor.execute(_BACKEND_PID).fetchone())
            cursor.execute(statement.query, statement.params, prepare=_prepare(conn))
            if statement.flag:
                statement.saw(statement.flag, cursor.fetchone())


async def insert_messages_async(
    target: AsyncTarget, messages: Sequence[NewMessage], *, schema: str
) -> None:
    conn = target.connection if isinstance(target, psycopg.AsyncCursor) else target
    with _translated(schema):
        statement = _statement(conn, messages, schema=schema)
        async with conn.cursor(row_factory=tuple_row) as cursor:
            if conn.prepare_threshold is not None and conn not in _POOLED:
                await cursor.execute(_BACKEND_PID)
                _saw_backend(conn, await cursor.fetchone())
            await cursor.execute(statement.query, statement.params, prepare=_prepare(conn))
            if statement.flag:
                statement.saw(statement.flag, await cursor.fetchone())


@contextlib.contextmanager
def _translated(schema: str) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.UndefinedFunction as exc:
        raise StoreError(
            f"inserting into {schema}.outbox failed: {exc}\nThe outbox schema has no "
            "outbox_wake(): it predates this outbox-relay. Run `outbox-relay migrate` on it "
            "(before upgrading the applications that publish)."
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"inserting into {schema}.outbox failed: {exc}\nGrant the producer's role what "
            f"`outbox-relay sql --schema {schema} --grants producer=ROLE` prints (INSERT on "
            "the outbox, EXECUTE on outbox_wake(boolean), SELECT on outbox_listener)."
        ) from exc
    except psycopg.Error as exc:
        raise StoreError(f"inserting into {schema}.outbox failed: {exc}") from exc


def _statement(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    messages: Sequence[NewMessage],
    *,
    schema: str,
) -> _Statement:
    """The insert and its parameters; while a relay may be waiting, with the look at the
    wake-up flag (and the NOTIFY) in the same statement."""
    _check_in_transaction(conn)
    info = conn.info
    flag = (*_server(conn), schema)
    name, params = _insert(messages)
    looked_at = FLAG_SEEN.clock()
    if not FLAG_SEEN.must_look(flag):
        return _Statement(_query(schema, name, info.encoding), params, None, looked_at)
    params["wake_scheduled"] = any(m.delay_s > 0 for m in messages)
    query = _query(schema, name, info.encoding, wake=True)
    return _Statement(query, params, flag, looked_at)


# Connections known to reach PostgreSQL directly (False) or through a pooler (True).
_POOLED: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()
_BACKEND_PID = b"SELECT pg_backend_pid()"


def _saw_backend(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], row: tuple[Any, ...] | None
) -> None:
    """Behind a pooler the server process answering is not the one announced at connect."""
    _POOLED[conn] = row is None or row[0] != conn.info.backend_pid


def _prepare(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool | None:
    """False (never prepare) behind a pooler; None (psycopg decides) otherwise."""
    return False if _POOLED.get(conn) else None


# Where each connection goes (host, port, database), read from libpq once per connection.
_SERVERS: weakref.WeakKeyDictionary[object, tuple[str, int, str]] = weakref.WeakKeyDictionary()


def _server(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> tuple[str, int, str]:
    server = _SERVERS.get(conn)
    if server is None:
        info = conn.info
        try:
            port = info.port
        except psycopg.Error:  # libpq knows no port (no default compiled in)
            port = 0
        server = _SERVERS[conn] = (info.host, port, info.dbname)
    return server


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
            "properties": m.properties_json,
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
        "properties": [m.properties_json for m in messages],
    }


@functools.lru_cache(maxsize=128)
def _query(schema: str, name: str, encoding: str, *, wake: bool = False) -> bytes:
    """The statement as bytes: psycopg renders a composed query on every execute (a
    third of publish's own CPU), but caches the parsing of bytes."""
    queries = Queries("producer", schema=schema)
    query: sql.Composable = queries[name]
    if wake:
        query = sql.SQL("WITH inserted AS ({}) {}").format(query, queries["wake"])
    return query.as_string(None).encode(encoding)


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
