"""A deadline on every round trip to the database: a connection that stops answering is
declared dead, closed, and replaced.

TCP keepalives and TCP_USER_TIMEOUT (:mod:`outbox_relay.dead_peer`) find a peer that has
vanished, but not one whose kernel still acknowledges what it is sent while nothing
answers: a hung pooler or proxy, a failover address that still accepts packets. psycopg
waits for such an answer for good, and a server-side ``statement_timeout`` cannot help,
since its error never arrives. So each statement, commit and rollback the project runs
goes through :meth:`Deadlines.round_trip`: one watchdog thread per owner looks at the
round trips in progress, and when one has lasted ``timeout_s`` it logs a warning (which
connection, how long, what happens next) and shuts the connection's socket down. psycopg's
wait then ends at once with an error, which :meth:`Deadlines.round_trip` raises as
:class:`StoreUnavailableError`; the caller reconnects, as for any lost connection.

Shutting the socket down (not closing it) is safe from another thread: the descriptor
stays psycopg's, to close as usual. An answer that arrives just as the deadline passes
still counts as too late: the socket is gone by then.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import structlog

from outbox_relay.errors import NoAnswerError, StoreError
from outbox_relay.store.connect import translate_errors

# A database that takes this long over one of the project's statements (each touches a
# few thousand rows at most) is not answering; detection then takes about this long.
DB_TIMEOUT_S = 15.0
DB_TIMEOUT_RULE = "must be 0 (no deadline) or at least 1 second"
# How often the watchdog looks at the round trips in progress, as a fraction of the
# timeout, and within these bounds (seconds).
_TICK_FRACTION = 0.1
_TICK_MIN_S = 0.05
_TICK_MAX_S = 1.0

log = structlog.get_logger("outbox_relay.store")


def usable_db_timeout(timeout_s: float) -> bool:
    return timeout_s == 0 or timeout_s >= 1


class _RoundTrip:
    __slots__ = ("conn", "connection", "deadline", "expired", "started", "what")

    def __init__(
        self, conn: psycopg.Connection[Any], connection: str, what: str, timeout_s: float
    ) -> None:
        self.conn = conn
        self.connection = connection
        self.what = what
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.expired = False


class Deadlines:
    """Ends the round trips that last longer than ``timeout_s`` (0: no deadline).

    ``owner`` names whose connections these are in the warning (``relay``, ``consumer
    billing``). The watchdog thread starts with the first round trip and stops with
    :meth:`close`; it is a daemon, so an owner that never closes does not hold the
    process up.
    """

    def __init__(self, *, timeout_s: float = DB_TIMEOUT_S, owner: str = "outbox-relay") -> None:
        self.timeout_s = timeout_s
        self._owner = owner
        self._lock = threading.Lock()
        self._running: set[_RoundTrip] = set()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._tick_s = min(_TICK_MAX_S, max(_TICK_MIN_S, timeout_s * _TICK_FRACTION))

    @contextlib.contextmanager
    def round_trip(
        self, conn: psycopg.Connection[Any], *, connection: str, what: str
    ) -> Iterator[None]:
        """Run the block (psycopg calls on ``conn``) within the deadline; raises
        StoreUnavailableError when it passed. ``connection`` names the connection (its
        role: ``work``, ``listen``, ``handler``), ``what`` the operation."""
        if self.timeout_s <= 0:
            yield
            return
        trip = _RoundTrip(conn, connection, what, self.timeout_s)
        with self._lock:
            self._running.add(trip)
            if self._thread is None:
                self._closed.clear()
                self._thread = threading.Thread(
                    target=self._watch, name="outbox-relay-db-deadline", daemon=True
                )
                self._thread.start()
        try:
            yield
        except (psycopg.Error, StoreError) as exc:
            if trip.expired:
                raise self._expired_error(trip) from exc
            raise
        finally:
            with self._lock:
                self._running.discard(trip)
        if trip.expired:  # answered, but after its socket was shut down
            raise self._expired_error(trip)

    def close(self) -> None:
        """Stop the watchdog thread (a later round trip starts it again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2 * self._tick_s + 1)

    def _expired_error(self, trip: _RoundTrip) -> NoAnswerError:
        return NoAnswerError(
            f"database unavailable while {trip.what}: no answer within {self.timeout_s:g} s "
            f"on the {self._owner}'s {trip.connection} connection (--db-timeout), so it was "
            "closed; a new connection replaces it"
        )

    def _watch(self) -> None:
        while not self._closed.wait(self._tick_s):
            now = time.monotonic()
            with self._lock:
                for trip in self._running:
                    if not trip.expired and now >= trip.deadline:
                        trip.expired = True
                        self._end(trip, now)

    def _end(self, trip: _RoundTrip, now: float) -> None:
        """Warn and shut the connection's socket down; under the lock, so the round trip
        cannot return (and its connection be closed) meanwhile."""
        log.warning(
            "store.no_answer",
            owner=self._owner,
            connection=trip.connection,
            operation=trip.what,
            waited_s=round(now - trip.started, 1),
            db_timeout_s=self.timeout_s,
            action="closing the connection; a new one replaces it",
        )
        shut_down(trip.conn)


def shut_down(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down both ways, from any thread; never raises. A
    wait on it ends at once with an error; the connection is unusable afterwards."""
    with contextlib.suppress(OSError, psycopg.Error):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def guarded(
    deadlines: Deadlines, conn: psycopg.Connection[Any], *, connection: str, action: str
) -> Iterator[None]:
    """:meth:`Deadlines.round_trip` around :func:`translate_errors`: psycopg's errors
    become ours, and a round trip past its deadline says so."""
    with deadlines.round_trip(conn, connection=connection, what=action), translate_errors(action):
        yield
