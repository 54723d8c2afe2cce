"""Whether a connection pooler stands between us and PostgreSQL, and in which mode.

Most production databases are reached through PgBouncer, RDS Proxy, Supavisor, pgcat or
Odyssey, and a sidecar gets its application's URL. In **transaction** mode the pooler hands
each transaction whichever server session is free, so nothing may outlive a transaction:
no server-side prepared statements (psycopg prepares a query at its sixth execution; the
next transaction's server may already hold ``_pg3_0``, or not have it), no session
``SET``, and ``LISTEN`` hears nothing. **Session** mode pins one server session per client
and behaves like a direct connection. **Statement** mode forbids transactions and cannot
run the relay at all.

Detection, cheap where it matters:

1. A pooler answers the client's startup itself, so the process id it announces (the
   cancel key, ``conn.info.backend_pid``) is its own, not the server's
   ``pg_backend_pid()``. Equal: a direct connection (one round trip, the only cost on
   the common path).
2. Behind a pooler, one more short connection listens while the first runs a
   transaction of two statements with a ``NOTIFY`` (a statement-mode pooler refuses the
   transaction). The notification arrives within milliseconds when the listening
   server session stays with its client (session mode) and never when the pooler has
   handed that session back (transaction mode; the probe then waits
   ``LISTEN_PROBE_TIMEOUT_S``). Whatever is not proven session mode is treated as
   transaction mode, which is safe for both.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import structlog
from psycopg import sql

from outbox_relay.errors import StoreError
from outbox_relay.poll_ticker import POOLED_POLL_S

# How long the probe waits for its own NOTIFY behind a pooler (session mode: milliseconds).
LISTEN_PROBE_TIMEOUT_S = 1.0

log = structlog.get_logger("outbox_relay.store")


class Pooling(enum.Enum):
    DIRECT = "direct"
    SESSION = "session"  # a pooler that keeps one server session per client
    TRANSACTION = "transaction"  # a pooler that may change the server session per transaction

    @property
    def keeps_session(self) -> bool:
        """Session state (prepared statements, SET, LISTEN) lasts across transactions."""
        return self is not Pooling.TRANSACTION


def pooler_in_front(conn: psycopg.Connection[Any]) -> bool:
    """True when ``conn`` reaches PostgreSQL through a pooler: the backend the client was
    told about at connect time is not the one running its statements. Leaves ``conn``
    without an open transaction."""
    if conn.autocommit:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    else:
        with _refusing_statement_mode(), conn.transaction():
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return row is None or row[0] != conn.info.backend_pid


def pooling_mode(
    conn: psycopg.Connection[Any], opener: Callable[[], psycopg.Connection[Any]]
) -> Pooling:
    """How ``conn`` reaches PostgreSQL. ``opener()`` opens another autocommit connection
    to the same URL, only behind a pooler, to LISTEN while ``conn`` sends the NOTIFY (one
    connection more than the caller's, for a moment: a session pool sized to the relay's
    connections still has room). ``conn`` is left without an open transaction.

    Raises StoreError for a statement-mode pooler, naming it and the fix; psycopg's
    errors otherwise pass through (the caller translates them).
    """
    if not pooler_in_front(conn):
        return Pooling.DIRECT
    channel = sql.Identifier(f"outbox_relay_probe_{uuid.uuid4().hex[:12]}")
    listener: psycopg.Connection[Any] = opener()
    try:
        listener.execute(sql.SQL("LISTEN {}").format(channel))
        _notify_in_transaction(conn, channel)
        heard = list(listener.notifies(timeout=LISTEN_PROBE_TIMEOUT_S, stop_after=1))
        # Behind a transaction pool this lands on any server session, often the one
        # that LISTENed (the pool hands back the session freed last); no harm otherwise.
        listener.execute(sql.SQL("UNLISTEN {}").format(channel))
    finally:
        listener.close()
    return Pooling.SESSION if heard else Pooling.TRANSACTION


def _notify_in_transaction(conn: psycopg.Connection[Any], channel: sql.Identifier) -> None:
    with _refusing_statement_mode(), conn.transaction():
        conn.execute("SELECT 1")
        conn.execute(sql.SQL("NOTIFY {}").format(channel))


@contextlib.contextmanager
def _refusing_statement_mode() -> Iterator[None]:
    """A pooler's refusal of a transaction becomes StoreError (not "unavailable": no
    retry can help), naming the pooler's mode and the fix."""
    try:
        yield
    except psycopg.Error as exc:
        text = str(exc).lower()
        if "statement pooling" not in text and "statement mode" not in text:
            raise
        raise StoreError(
            "the database URL goes through a connection pooler in statement mode, which "
            f"refuses transactions ({_first_line(exc)}): give outbox-relay a pool in "
            "transaction or session mode (PgBouncer: pool_mode = transaction for this "
            "database or user), or a direct URL"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_announced: set[tuple[str, str]] = set()
_announced_lock = threading.Lock()


def announce_once(component: str, *, detected: str, changes: str) -> None:
    """Log, once per process and component, the pooler found and what it changed."""
    with _announced_lock:
        if (component, detected) in _announced:
            return
        _announced.add((component, detected))
    log.info("database.pooler_detected", component=component, detected=detected, changes=changes)


def describe(mode: Pooling) -> str:
    if mode is Pooling.SESSION:
        return (
            "a connection pooler in session mode (the server session announced at "
            "connect differs from the one answering, and LISTEN works through it)"
        )
    if mode is Pooling.TRANSACTION:
        return (
            "a connection pooler in transaction mode (the server session announced at "
            "connect differs from the one answering, and LISTEN does not hear through it)"
        )
    return "a direct connection"


def relay_changes(mode: Pooling, *, polling: bool) -> str:
    """What the relay does differently behind a pooler in ``mode`` (``polling``: it polls
    for new rows instead of LISTEN), as logged once at start."""
    if mode.keeps_session:
        return "nothing: session state lasts through this pooler"
    wake = (
        f"polling for new rows every {POOLED_POLL_S * 1000:.0f} ms instead of "
        "LISTEN (set --listen-database-url to a direct or session-mode URL to LISTEN)"
        if polling
        else "LISTEN on --listen-database-url"
    )
    return (
        "no server-side prepared statements; the work settings are applied to each "
        f"claim's transaction (SET LOCAL); wake-ups: {wake}"
    )
