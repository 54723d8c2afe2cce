"""A SQLAlchemy ``Session`` on the handler's own transaction (``pip install
'outbox-relay[sqlalchemy]'``); imported only for handlers that ask for one.

The session runs on the very connection that holds the inbox row, through an engine
(``postgresql+psycopg``) that wraps that connection instead of opening its own. The
runner owns the transaction: the engine's commit, rollback and close are turned into
nothing, and the session joins with a savepoint, so ``session.commit()`` in a handler
flushes and releases the savepoint (the work commits with the inbox row, before the ack)
and ``session.rollback()`` undoes the session's work since it began, never the inbox row.
One engine per worker thread, rebuilt when the worker's connection changes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from outbox_relay.errors import ConfigurationError

DIALECT_URL = "postgresql+psycopg://"


class _Bound(threading.local):
    connection: object = None
    engine: Engine | None = None


_bound = _Bound()


@contextlib.contextmanager
def bound_session(connection: object) -> Iterator[Session]:
    """A Session on ``connection`` (a psycopg ``Connection`` inside a transaction), closed
    on exit without ending that transaction."""
    if connection is None:
        raise ConfigurationError(
            "the handler takes a SQLAlchemy Session but runs without a database: give "
            "the consumer app a database URL (or, in a test, a connection)"
        )
    engine = _engine_for(connection)
    with engine.connect() as wrapped:
        wrapped.begin()  # nothing is sent: the connection is already in its transaction
        session = Session(bind=wrapped, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            session.close()


def _engine_for(connection: object) -> Engine:
    if _bound.engine is not None and _bound.connection is connection:
        return _bound.engine
    if _bound.engine is not None:
        _bound.engine.dispose(close=False)
    engine = create_engine(
        DIALECT_URL,
        creator=lambda: connection,
        poolclass=StaticPool,
        pool_reset_on_return=None,
    )
    dialect: Any = engine.dialect
    dialect.do_commit = _leave_to_the_runner
    dialect.do_rollback = _leave_to_the_runner
    dialect.do_close = _leave_to_the_runner
    _bound.connection, _bound.engine = connection, engine
    return engine


def _leave_to_the_runner(_dbapi_connection: object) -> None:
    """The runner commits or rolls back the handler's transaction, after the handler."""
