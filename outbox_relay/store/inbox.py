"""The consumer's database side: one handler transaction at a time, keyed in the inbox.

A :class:`HandlerSession` belongs to one worker thread. For each delivery it opens a
transaction, inserts (consumer, message id) into ``<schema>.inbox`` and hands the
connection to the handler (an async handler gets the same connection through psycopg's
async API); the runner then commits or rolls back. A session whose
handler ran past its timeout is ended from another thread with :meth:`HandlerSession.kill`:
the running statement is cancelled and the backend terminated, so the transaction can
never commit and its inbox row lock is released for the retry.

Behind a connection pooler each transaction may run on another server session: the
session then prepares no statements, and the server process to end is the one that ran
the inbox insert of the transaction in question, which must still be running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_S
from outbox_relay.errors import InboxBusyError, NoAnswerError, StoreError, StoreUnavailableError
from outbox_relay.store.connect import connect, connection_lost
from outbox_relay.store.deadline import Deadlines, guarded
from outbox_relay.store.pooler import announce_once, pooler_in_front
from outbox_relay.store.sqlfiles import Queries
from outbox_relay.store.views import async_view
from outbox_relay.urls import redact_url

PURGE_BATCH = 5_000
# How much of the database deadline the inbox insert may spend waiting for another
# delivery of the same message: the wait must end as an error the consumer reads as
# "busy", before the deadline ends it as a silent database.
LOCK_WAIT_FRACTION = 2 / 3


def lock_wait_setting(db_timeout_s: float) -> str:
    """The inbox insert's lock_timeout for a database deadline (0: none, wait as long
    as the other delivery's handler runs; it is ended at its timeout)."""
    if db_timeout_s <= 0:
        return "0"
    return f"{max(1, round(db_timeout_s * LOCK_WAIT_FRACTION * 1000))}ms"


class HandlerSession:
    """One connection (autocommit off) that runs handler transactions, one at a time."""

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        application_name: str,
        dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S,
        deadlines: Deadlines | None = None,
    ) -> None:
        self._url = url
        self._dead_peer_timeout_s = dead_peer_timeout_s
        # The SDK's own round trips have a deadline; the handler's statements are its own.
        self._deadlines = deadlines or Deadlines(owner=application_name)
        self._schema = schema
        self._application_name = application_name
        self._q = Queries("consumer", schema=schema)
        self._conn: psycopg.Connection[Any] | None = None
        # The server process running the current transaction, and when that began.
        self._pid: int | None = None
        self._xact_start: object = None
        self._insert = ""
        self._lock_wait = lock_wait_setting(self._deadlines.timeout_s)
        self._lock_wait_after = "0"

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The connection the handler receives as ``tx``."""
        if self._conn is None or self._conn.closed:
            raise StoreUnavailableError("not connected to the database")
        return self._conn

    @property
    def async_connection(self) -> psycopg.AsyncConnection[Any]:
        """The same connection, transaction included, as an async handler's ``tx`` (see
        :mod:`outbox_relay.store.views`): everything else stays this session's."""
        return async_view(self.connection)

    def begin(self, *, consumer: str, message_id: str) -> bool:
        """Start a transaction with the inbox row; False when the message was seen before
        (the transaction then holds nothing and only needs a commit). Raises
        InboxBusyError when another delivery of the message holds its row too long
        (see LOCK_WAIT_FRACTION); the transaction then needs a rollback. A kept connection
        that turns out dead (the database restarted or the network cut it while it sat
        idle) is replaced once, so the first delivery after an outage does not fail."""
        reused = not self._connect_if_needed()
        try:
            return self._insert_row(consumer, message_id)
        except NoAnswerError:
            raise  # silent, not found dead: a new connection would wait out its timeout too
        except StoreUnavailableError:
            if not reused or not (self._conn is None or self._conn.closed or self._conn.broken):
                raise
        self._connect_if_needed()
        return self._insert_row(consumer, message_id)

    def _connect_if_needed(self) -> bool:
        """Open a connection unless one is usable; True when it opened one."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return False
        self.close()
        self._conn = connect(
            self._url,
            autocommit=False,
            application_name=self._application_name,
            dead_peer_timeout_s=self._dead_peer_timeout_s,
            prepare=True,
        )
        try:
            with self._guarded("checking for a connection pooler"):
                pooled = pooler_in_front(self._conn)
        except StoreError as exc:
            # A statement-mode pooler: no message can be handled until the URL is
            # fixed, so the delivery goes back (with the reason logged), never to retry.
            self.close()
            raise StoreUnavailableError(str(exc)) from exc
        if pooled:
            self._conn.prepare_threshold = None
            announce_once(
                "consumer",
                detected="a connection pooler (the server session announced at connect "
                "differs from the one answering)",
                changes="no server-side prepared statements; a timed-out handler's "
                "server session is found per transaction",
            )
        with self._guarded("reading lock_timeout"):
            row = self._conn.execute(self._q["lock_timeout"]).fetchone()
            self._conn.rollback()
        self._lock_wait_after = str(row[0]) if row is not None else "0"
        # Rendered once: composing the quoted schema on every delivery costs more than
        # the insert's round trip on a busy consumer.
        self._insert = self._q["inbox_insert"].as_string(self._conn)
        return True

    def _insert_row(self, consumer: str, message_id: str) -> bool:
        conn = self.connection
        params = {
            "consumer": consumer,
            "message_id": message_id,
            "lock_wait": self._lock_wait,
            "lock_wait_after": self._lock_wait_after,
        }
        try:
            with self._guarded(f"recording message {message_id} in {self._schema}.inbox"):
                row = conn.execute(self._insert, params).fetchone()
        except StoreError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
                raise
            raise InboxBusyError(
                f"message {message_id} is being handled by another delivery (its inbox row "
                f"in {self._schema}.inbox stayed locked for {self._lock_wait}); this delivery "
                "goes back to the queue"
            ) from exc
        self._pid, self._xact_start = (row[0], row[1]) if row is not None else (None, None)
        return row is not None

    def commit(self) -> None:
        with self._guarded("committing the handler's transaction"):
            self.connection.commit()

    def rollback(self) -> None:
        """Roll back; a connection that cannot is closed, and replaced on the next begin."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            with self._guarded("rolling back the handler's transaction"):
                conn.rollback()
        except StoreError:
            self.close()

    def lost_connection(self, exc: BaseException) -> StoreUnavailableError | None:
        """``exc``, raised by the handler's own statements, as the database being
        unavailable when it means this session's connection was lost (a restart, a
        failover, a terminated backend); None when it is the handler's own failure. The
        consumer then gives the delivery back without spending an attempt."""
        reason = connection_lost(self._conn, exc)
        if reason is None:
            return None
        error = StoreUnavailableError(reason)
        error.__cause__ = exc
        return error

    def _guarded(self, action: str) -> contextlib.AbstractContextManager[None]:
        return guarded(self._deadlines, self.connection, connection="handler", action=action)

    def kill(self) -> None:
        """From another thread: cancel the running statement and terminate the backend.

        Whatever the handler does afterwards with its connection fails; nothing it did
        in this transaction can commit. Never raises.
        """
        conn, pid = self._conn, self._pid
        if conn is None or pid is None:
            return
        with contextlib.suppress(psycopg.Error):
            conn.cancel_safe(timeout=2.0)
        with (
            contextlib.suppress(StoreUnavailableError, psycopg.Error),
            admin_connection(self._url) as admin,
        ):
            admin.execute(
                self._q["terminate_backend"], {"pid": pid, "xact_start": self._xact_start}
            )

    def close(self) -> None:
        conn, self._conn, self._pid, self._xact_start = self._conn, None, None, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.close()


@contextlib.contextmanager
def admin_connection(url: str) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(url, autocommit=True, application_name="outbox-relay consumer admin")
    try:
        yield conn
    finally:
        conn.close()


def check_inbox(url: str, *, schema: str, deadlines: Deadlines | None = None) -> None:
    """Connect and read the inbox's definition, within ``deadlines`` when given: raises
    StoreUnavailableError while the database is down or silent, StoreMisconfiguredError
    when no retry helps (a refused login, a missing database, role or inbox); the message
    names the (redacted) URL."""
    deadlines = deadlines or Deadlines(timeout_s=0)
    action = f"checking {schema}.inbox at {redact_url(url)}"
    with (
        admin_connection(url) as conn,
        guarded(deadlines, conn, connection="check", action=action),
    ):
        conn.execute(Queries("consumer", schema=schema)["inbox_check"])


def purge_inbox(
    url: str,
    *,
    schema: str,
    older_than_s: float,
    batch: int = PURGE_BATCH,
    deadlines: Deadlines | None = None,
) -> int:
    """Delete inbox rows older than ``older_than_s``, ``batch`` rows per transaction,
    each within ``deadlines`` when given.

    Short transactions keep locks and WAL bursts small; returns the rows deleted.
    """
    query = Queries("consumer", schema=schema)["inbox_purge"]
    deleted = 0
    deadlines = deadlines or Deadlines(timeout_s=0)
    action = f"purging {schema}.inbox"
    with admin_connection(url) as conn:
        while True:
            with guarded(deadlines, conn, connection="purge", action=action):
                count = conn.execute(query, {"older_than_s": older_than_s, "batch": batch}).rowcount
            deleted += max(count, 0)
            if count < batch:
                return deleted
