"""The publisher's link to the broker: one pika connection and the I/O loop that serves it
from the caller's thread.

:class:`Link` opens a ``SelectConnection`` (a :class:`ChunkedConnection` unless another
factory is given), opens channels on it, runs pika's I/O loop until a condition holds or
a timeout passes (:meth:`Link.run_until`), and notes what pika's connection callbacks
say: the connection opened, failed or closed, the broker blocks or unblocks publishers.
What the broker says about the messages is the publisher's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika.exceptions
import structlog
from pika.adapters.select_connection import PollEvents
from pika.connection import Parameters
from pika.frame import Method

from outbox_relay.amqp_fields import DEFAULT_FRAME_MAX_BYTES
from outbox_relay.amqp_url import describe_amqp_error, unavailable
from outbox_relay.errors import BrokerUnavailableError
from outbox_relay.publisher.pika_transport import ChunkedConnection
from outbox_relay.urls import redact_url

CLOSE_TIMEOUT_S = 2.0
# Confirms of a pipelined batch take milliseconds; waiting this long is worth a warning,
# and a batch's frames not written to the socket by then are left for that wait.
SLOW_WAIT_S = 2.0
_TICK_S = 0.5  # how often a long wait looks at should_stop and the blocked state

# Makes the connection: called as ChunkedConnection is, with pika's Parameters and the
# keyword callbacks on_open_callback, on_open_error_callback and on_close_callback.
ConnectionFactory = Callable[..., ChunkedConnection]

log = structlog.get_logger("outbox_relay.publisher")


class Link:
    """One AMQP connection, served by running its I/O loop from the caller's thread.

    ``on_closed(reason)`` hears of every close of an open connection first; when it
    answers True the close is not an outage (the publisher blamed rows for it) and
    :attr:`error` stays unset. ``on_discard()`` runs whenever the connection is dropped.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        should_stop: Callable[[], bool],
        connection_factory: ConnectionFactory,
        on_closed: Callable[[BaseException], bool],
        on_discard: Callable[[], None],
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._should_stop = should_stop
        self._factory = connection_factory
        self._on_closed = on_closed
        self._on_discard = on_discard
        self.conn: ChunkedConnection | None = None
        self._opened = False
        # Why the connection failed or was lost; None while it is usable.
        self.error: BaseException | None = None
        self.blocked = False
        # When the broker last stopped blocking publishers.
        self.unblocked_at = 0.0
        self._until: Callable[[], bool] | None = None
        self._fd_ready = False

    @property
    def usable(self) -> bool:
        return self.conn is not None and self.conn.is_open and self.error is None

    @property
    def frame_max(self) -> int:
        """The largest frame the broker takes on this connection (negotiated when it
        opened; 0 for no limit)."""
        conn = self.conn
        return DEFAULT_FRAME_MAX_BYTES if conn is None else int(conn.params.frame_max)

    def unwritten(self) -> int:
        """Bytes buffered for the socket; 0 once pika dropped a lost connection's transport."""
        conn = self.conn
        return 0 if conn is None else conn.unwritten()

    def open(self, params: Parameters, url: str) -> None:
        """Close any connection, then open one with ``params``; raises
        BrokerUnavailableError (naming the redacted ``url``)."""
        self.close()
        self._opened, self.error, self.blocked = False, None, False
        try:
            conn = self._factory(
                params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_connection_closed,
            )
        except pika.exceptions.AMQPError as exc:
            raise unavailable(describe_amqp_error(exc), exc) from exc
        self.conn = conn
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)
        opened = self.run_until(
            lambda: self._opened or self.error is not None, self.connect_timeout_s
        )
        if self.error is not None or not opened:
            error = self.error
            self.discard()
            reason = describe_amqp_error(error) if error else "timed out"
            raise unavailable(f"cannot connect to {redact_url(url)}: {reason}", error)

    def close(self) -> None:
        """Close the connection; never raises."""
        conn = self.conn
        if conn is None:
            return
        if conn.is_open:
            try:
                conn.close()
                self.run_until(lambda: conn.is_closed, CLOSE_TIMEOUT_S)
            except pika.exceptions.AMQPError:
                pass
        if not conn.is_closed:
            # A broker that blocks publishers (memory alarm) or a stalled peer never
            # answers Connection.Close, and pika has no public way to drop the socket.
            conn.abort()
            self.run_until(lambda: conn.is_closed, CLOSE_TIMEOUT_S)
        self.discard()

    def discard(self) -> None:
        """Drop the connection without closing it."""
        if self.conn is not None:
            self.conn.ioloop.close()
        self.conn = None
        self._on_discard()

    def require(self, url: str) -> ChunkedConnection:
        """The connection; raises BrokerUnavailableError when it is not usable."""
        if self.conn is None or self.error is not None or not self.conn.is_open:
            raise BrokerUnavailableError(
                f"not connected to {redact_url(url)}: {describe_amqp_error(self.error)}"
            )
        return self.conn

    def raise_if_lost(self) -> None:
        if self.error is not None:
            raise BrokerUnavailableError(f"connection lost: {describe_amqp_error(self.error)}")

    # -- waiting ------------------------------------------------------------------------

    def wait(self, conn: ChunkedConnection, timeout_s: float, *, wake_fd: int | None) -> bool:
        """Serve ``conn`` (heartbeats) for up to ``timeout_s``; return early, with True,
        once ``wake_fd`` is readable. Raises BrokerUnavailableError when it is lost."""
        self._fd_ready = False
        if wake_fd is not None:
            conn.ioloop.add_handler(wake_fd, self._on_fd_readable, PollEvents.READ)
        try:
            self.run_until(lambda: self._fd_ready or self.error is not None, timeout_s)
        finally:
            if wake_fd is not None and self.conn is not None:
                self.conn.ioloop.remove_handler(wake_fd)
        self.raise_if_lost()
        return self._fd_ready

    def _on_fd_readable(self, _fd: int, _events: int) -> None:
        self._fd_ready = True
        self.check()

    def run_until(
        self,
        done: Callable[[], bool],
        timeout_s: float,
        *,
        patient_while_blocked: bool = False,
        deadline: float | None = None,
        on_slow: Callable[[float], None] | None = None,
        since: Callable[[], float] | None = None,
    ) -> bool:
        """Run the I/O loop until ``done()``; False on timeout or when asked to stop.
        The timeout counts from ``since()`` (monotonic, read at every turn; now by
        default); ``on_slow`` from now, so a batch waited for late is reported only when
        this wait is slow. A timeout is declared only after one turn of the loop has read
        what had arrived.

        With ``patient_while_blocked`` the timeout restarts while the broker blocks the
        connection (memory or disk alarm): publishing waits for it rather than giving up,
        until the monotonic ``deadline`` (the lease's end) if there is one.
        ``on_slow`` is called once, with the seconds waited, after SLOW_WAIT_S.
        """
        conn = self.conn
        if conn is None:
            return done()
        waiting_since = time.monotonic()
        end = waiting_since + timeout_s
        looked = False
        while not done():
            now = time.monotonic()
            if since is not None:
                end = since() + timeout_s
            if on_slow is not None and now - waiting_since >= SLOW_WAIT_S:
                on_slow(now - waiting_since)
                on_slow = None
            if patient_while_blocked and self.blocked:
                end = now + timeout_s
            remaining = end - now
            if patient_while_blocked and deadline is not None:
                remaining = min(remaining, deadline - now)
            # Stopping abandons outstanding confirms only while the broker blocks us (that
            # wait has no end); otherwise SIGTERM lets the batches in flight be confirmed
            # and settled, so nothing they published is sent twice.
            if (remaining <= 0 and looked) or (
                patient_while_blocked and self.blocked and self._should_stop()
            ):
                return False
            looked = True
            timer = conn.ioloop.call_later(max(0.0, min(remaining, _TICK_S)), conn.ioloop.stop)
            self._until = done
            try:
                conn.ioloop.start()
            finally:
                self._until = None
                conn.ioloop.remove_timeout(timer)
        return True

    def note(self, results: list[bool], value: bool) -> None:
        """Append ``value`` to ``results`` and stop the loop if the wait is over."""
        results.append(value)
        self.check()

    def check(self) -> None:
        """Stop the I/O loop if what :meth:`run_until` waits for holds (call it from
        every callback that may change that)."""
        if self._until is not None and self._until() and self.conn is not None:
            self.conn.ioloop.stop()

    # -- pika's connection callbacks ----------------------------------------------------

    def _on_open(self, _conn: object) -> None:
        self._opened = True
        self.check()

    def _on_open_error(self, _conn: object, error: BaseException | str) -> None:
        self.error = error if isinstance(error, BaseException) else RuntimeError(error)
        self.check()

    def _on_connection_closed(self, _conn: object, reason: BaseException) -> None:
        if not self._on_closed(reason):
            self.error = reason
        self.check()

    def _on_blocked(self, _conn: object, frame: Method[Any]) -> None:
        self.blocked = True
        log.warning("publisher.blocked", reason=getattr(frame.method, "reason", ""))
        self.check()

    def _on_unblocked(self, _conn: object, _frame: object) -> None:
        self.blocked = False
        self.unblocked_at = time.monotonic()
        log.info("publisher.unblocked")
        self.check()
