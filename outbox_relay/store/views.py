"""One libpq connection seen through psycopg's other API: an ``AsyncConnection`` on a
``Connection``'s server session, or the reverse.

An async handler's transaction is the very transaction the worker's
:class:`~outbox_relay.store.inbox.HandlerSession` opened with the inbox row: the view
wraps the same ``PGconn`` (psycopg's connection classes are built on one, see
``psycopg.AsyncConnection(pgconn)``), so there is one server session, one transaction,
and every inbox statement, commit, rollback, deadline and kill stays the session's own.
Only one of the two objects is used at a time: the worker thread does the inbox insert,
then runs the handler's coroutine to completion on its event loop, then commits.

psycopg reads the transaction state from libpq, so a view joins the transaction in
progress (``async with tx.transaction()`` in a handler makes a savepoint, as in a sync
handler). A view never prepares statements on the server: each psycopg object numbers
its prepared statements from ``_pg3_0``, and two numbering the same session would collide.

A view lives as long as the connection it views (it is closed with it, since both close
the one ``PGconn``).
"""

from __future__ import annotations

import weakref
from typing import Any

import psycopg

_async_views: weakref.WeakKeyDictionary[psycopg.Connection[Any], psycopg.AsyncConnection[Any]]
_async_views = weakref.WeakKeyDictionary()
_sync_views: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], psycopg.Connection[Any]]
_sync_views = weakref.WeakKeyDictionary()


def async_view(conn: psycopg.Connection[Any]) -> psycopg.AsyncConnection[Any]:
    """An ``AsyncConnection`` on ``conn``'s server session and transaction (the same one
    for as long as ``conn`` lives); it receives the session's notices and notifications."""
    view = _async_views.get(conn)
    if view is None or view.pgconn is not conn.pgconn:
        view = psycopg.AsyncConnection(conn.pgconn)
        view.prepare_threshold = None
        _async_views[conn] = view
    return view


def sync_view(conn: psycopg.AsyncConnection[Any]) -> psycopg.Connection[Any]:
    """A ``Connection`` on ``conn``'s server session and transaction, for the SDK's own
    statements; ``conn`` keeps its notice and notification handlers."""
    view = _sync_views.get(conn)
    if view is None or view.pgconn is not conn.pgconn:
        pgconn = conn.pgconn
        handlers = (pgconn.notice_handler, pgconn.notify_handler)
        view = psycopg.Connection(pgconn)
        pgconn.notice_handler, pgconn.notify_handler = handlers
        view.prepare_threshold = None
        _sync_views[conn] = view
    return view
