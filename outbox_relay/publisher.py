"""Publishing batches to RabbitMQ with pipelined publisher confirms.

pika's ``BlockingChannel`` waits for each confirm in turn (the slow path). This adapter
drives a ``SelectConnection`` from the caller's thread instead: :meth:`Publisher.send`
writes a whole batch and returns a :class:`Sending`, whose ``outcomes()`` runs pika's
I/O loop until every message has been acked, nacked or returned, or the channel or
connection died. Two batches may be in flight at once: the caller sends the next one
while the confirms of the first are still coming. Between batches
:meth:`Publisher.wait` runs the same loop, so heartbeats are answered while the relay
sleeps, and it also watches a file descriptor (the database's LISTEN socket) so a
NOTIFY wakes the relay at once.

The publisher is the transport: what the broker said about each batch is kept by
:class:`outbox_relay.relay.confirms.ConfirmTracker`; which rows a close is blamed on is
decided in :mod:`outbox_relay.publisher_blame`; how a row becomes an AMQP message, and
whether it can, in :mod:`outbox_relay.publisher_rows`. Those and
:mod:`outbox_relay.pika_transport` (which fences pika's private hooks) are the only
relay modules that import pika.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.select_connection import PollEvents
from pika.channel import Channel
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from outbox_relay import pika_doubles
from outbox_relay.amqp_fields import DEFAULT_FRAME_MAX_BYTES
from outbox_relay.amqp_url import describe_amqp_error, unavailable
from outbox_relay.broker_nodes import BrokerNodes, Node
from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_S
from outbox_relay.errors import BrokerUnavailableError, PublishInterruptedError
from outbox_relay.message import OutboxRow
from outbox_relay.pika_transport import ChunkedConnection
from outbox_relay.publisher_blame import culprits
from outbox_relay.publisher_rows import UNENCODABLE, checked, refusal, unencodable
from outbox_relay.relay.confirms import Batch, ConfirmTracker
from outbox_relay.relay.outcome import (
    Outcome,
    refused_by_broker,
    unroutable,
)
from outbox_relay.urls import redact_url

__all__ = ["CONFIRM_TIMEOUT_S", "Publisher", "Sending", "checked", "refusal"]

CONNECT_TIMEOUT_S = 10.0
CONFIRM_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 2.0
# Confirms of a pipelined batch take milliseconds; waiting this long is worth a warning,
# and a batch's frames not written to the socket by then are left for that wait.
SLOW_WAIT_S = 2.0
EXCHANGE_CHECK_TTL_S = 10.0
# Wait for the confirms of what a batch buffered before buffering more than this (per
# batch: with two batches out, up to twice this is unconfirmed).
MAX_UNCONFIRMED_BYTES = 32 * 1024 * 1024
_TICK_S = 0.5  # how often a long wait looks at should_stop and the blocked state
PERSISTENT = 2

log = structlog.get_logger("outbox_relay.publisher")


class Sending:
    """A batch handed to the broker: ``outcomes()`` waits for its confirms."""

    def __init__(self, publisher: Publisher, batch: Batch) -> None:
        self._publisher = publisher
        self._batch = batch

    def flush(self) -> bool:
        """Serve the connection until the batch's frames are all written to the socket
        (``send`` only buffers them: pika writes from its I/O loop), so the broker has
        them to work on while the caller does something else. False when that did not
        happen: the channel or connection closed, the broker blocks publishers, or the
        socket did not take them within SLOW_WAIT_S or before the lease deadline (past
        it, the loop still turns once). Errors are raised by ``outcomes()``."""
        return self._publisher._flush(self._batch)

    def outcomes(self) -> dict[int, Outcome]:
        """Each row's outcome, keyed by row id, once every message was confirmed or the
        channel closed; raises PublishInterruptedError (see :meth:`Publisher.send`)."""
        try:
            self._publisher._await_confirms(self._batch)
            return self._publisher._finish(self._batch)
        finally:
            self._publisher._forget(self._batch)

    def abandon(self) -> None:
        """Stop tracking the batch: confirms still to come for it are ignored."""
        self._publisher._forget(self._batch)


class Publisher:
    """One AMQP connection and one confirm-mode channel, used from one thread."""

    def __init__(
        self,
        *,
        url: str,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S,
        should_stop: Callable[[], bool] = lambda: False,
        on_node: Callable[[str], None] | None = None,
    ) -> None:
        pika_doubles.install()  # float headers as AMQP doubles
        self._url = url
        # Several nodes of a cluster: each connect() tries them in turn (broker_nodes).
        self.nodes = BrokerNodes(url, dead_peer_timeout_s=dead_peer_timeout_s, on_node=on_node)
        self._params = self.nodes.first.params
        self._confirm_timeout_s = confirm_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._should_stop = should_stop
        self._conn: ChunkedConnection | None = None
        self._opened = False
        self._conn_error: BaseException | None = None
        # Why the broker closed the connection over what was out (not an outage): the
        # rows are blamed, and the next use of the publisher connects again.
        self._refused: BaseException | None = None
        self._channel: Channel | None = None
        self._channel_error: BaseException | None = None
        self._tag = 0
        self._confirms = ConfirmTracker()  # the batches out, and the broker's replies
        self._until: Callable[[], bool] | None = None
        self._fd_ready = False
        self.blocked = False
        # When the broker last confirmed something, and last stopped blocking publishers:
        # a confirm timeout counts from the later of these and the batch's send.
        self._confirmed_at = 0.0
        self._unblocked_at = 0.0
        self._exchanges_seen: dict[str, float] = {}
        # Rows refused() passed on this connection, and their header tables.
        self._passed: dict[int, dict[str, Any] | None] = {}
        self._deadline: float | None = None  # of the batch whose confirms are awaited

    @property
    def batches_out(self) -> int:
        """Batches sent whose confirms are not all in."""
        return self._confirms.batches_out

    @property
    def vhost(self) -> str:
        return str(self._params.virtual_host)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open and self._conn_error is None

    @property
    def frame_max(self) -> int:
        """The largest frame the broker takes on this connection (negotiated when it
        opened; 0 for no limit)."""
        conn = self._conn
        return DEFAULT_FRAME_MAX_BYTES if conn is None else int(conn.params.frame_max)

    def refused(self, rows: Sequence[OutboxRow]) -> dict[int, Outcome]:
        """The failures of the rows this connection cannot carry (see :func:`refusal`),
        by row id; ``send`` would fail them too, one round each. The rows that pass are
        not checked again by the next ``send`` on this connection."""
        frame_max = self.frame_max
        refusals: dict[int, Outcome] = {}
        passed: dict[int, dict[str, Any] | None] = {}
        for row in rows:
            outcome, table = checked(row, frame_max=frame_max)
            if outcome is None:
                passed[row.id] = table
            else:
                refusals[row.id] = outcome
        self._passed = passed
        return refusals

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection and the confirm-mode channel on the first node that
        accepts it (see :mod:`outbox_relay.broker_nodes`); raises BrokerUnavailableError."""
        self.nodes.open(self._connect_to)

    def _connect_to(self, node: Node) -> None:
        self._params, self._url = node.params, node.url
        self.close()
        self._opened, self._conn_error, self.blocked = False, None, False
        self._refused = None
        try:
            conn = ChunkedConnection(
                self._params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_connection_closed,
            )
        except pika.exceptions.AMQPError as exc:
            raise unavailable(describe_amqp_error(exc), exc) from exc
        self._conn = conn
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)
        opened = self._run_until(
            lambda: self._opened or self._conn_error is not None, self._connect_timeout_s
        )
        if self._conn_error is not None or not opened:
            error = self._conn_error
            self._discard_connection()
            reason = describe_amqp_error(error) if error else "timed out"
            raise unavailable(f"cannot connect to {redact_url(self._url)}: {reason}", error)
        self._open_channel()
        log.info("publisher.connected", url=redact_url(self._url), node=node.name)

    def close(self) -> None:
        """Close the connection; never raises."""
        conn = self._conn
        if conn is None:
            return
        if conn.is_open:
            try:
                conn.close()
                self._run_until(lambda: conn.is_closed, CLOSE_TIMEOUT_S)
            except pika.exceptions.AMQPError:
                pass
        if not conn.is_closed:
            # A broker that blocks publishers (memory alarm) or a stalled peer never
            # answers Connection.Close, and pika has no public way to drop the socket.
            conn.abort()
            self._run_until(lambda: conn.is_closed, CLOSE_TIMEOUT_S)
        self._discard_connection()

    def _discard_connection(self) -> None:
        if self._conn is not None:
            self._conn.ioloop.close()
        self._conn, self._channel = None, None
        self._passed = {}
        self._confirms.clear()

    def _open_channel(self) -> None:
        if self._refused is not None:
            self._connect_after_refusal()  # which opens the channel
            return
        conn = self._require_connection()
        self._channel, self._channel_error, self._tag = None, None, 0
        ready: list[bool] = []

        def on_open(channel: Channel) -> None:
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(
                lambda frame: self._on_confirm(channel, frame),
                callback=lambda _frame: self._note(ready, True),
            )
            self._channel = channel

        conn.channel(on_open_callback=on_open)
        ok = self._run_until(
            lambda: bool(ready) or self._channel_error is not None or self._conn_error is not None,
            self._connect_timeout_s,
        )
        if not ok or not ready:
            reason = describe_amqp_error(self._channel_error or self._conn_error)
            raise BrokerUnavailableError(f"cannot open a confirm-mode channel: {reason}")

    def _connect_after_refusal(self) -> None:
        """The broker closed the connection over a message, not for an outage: connect
        again at once (an outage now raises BrokerUnavailableError, as usual)."""
        refused, self._refused = self._refused, None
        log.info("publisher.reconnecting", reason=describe_amqp_error(refused))
        self.connect()

    def _require_connection(self) -> ChunkedConnection:
        if self._refused is not None:
            self._connect_after_refusal()
        if self._conn is None or self._conn_error is not None or not self._conn.is_open:
            raise BrokerUnavailableError(
                f"not connected to {redact_url(self._url)}: {describe_amqp_error(self._conn_error)}"
            )
        return self._conn

    # -- publishing ---------------------------------------------------------------------

    def send(self, rows: Sequence[OutboxRow], *, deadline: float | None = None) -> Sending:
        """Publish ``rows`` in order; their outcomes come from the returned
        :class:`Sending`. Another batch may be sent before those outcomes are asked for.

        Rows the broker refused are FAILED with a reason; rows that never reached the
        broker because the channel closed under them, or were not sent because a message
        with their id was out already (and the rows after them), are UNSENT. Raises
        PublishInterruptedError (carrying the outcomes known so far) when the connection
        is lost, confirms do not arrive within the confirm timeout, or the monotonic
        ``deadline`` (the end of the caller's lease) passes; ``outcomes()`` raises it too.
        """
        if deadline is not None and time.monotonic() >= deadline:
            raise PublishInterruptedError("the partition lease ran out before publishing", {})
        if self._channel is None or not self._channel.is_open:
            self._open_channel()
        channel = self._channel
        assert channel is not None  # noqa: S101 - _open_channel raised otherwise
        conn = self._require_connection()
        batch = self._confirms.start(
            rows, channel=channel, first_tag=self._tag + 1, deadline=deadline
        )
        frame_max = self.frame_max
        # Rows refused() just passed on this connection, with their header tables; the
        # check costs from half a microsecond a row (no headers) to a few, a few percent
        # of publishing it.
        passed, self._passed = self._passed, {}
        # Message ids of the batches already out (see Returns).
        out = self._confirms.ids_out(but=batch)
        conn.holding = True
        try:
            buffered = 0
            for row in rows:
                message_id = row.message_id
                if message_id in out or message_id in batch.ids:
                    # One message with this id is out already: this row and the rest
                    # stay UNSENT and go in the next round, in order.
                    break
                if row.id in passed:
                    refused, table = None, passed[row.id]
                else:
                    refused, table = checked(row, frame_max=frame_max)
                if refused is not None:
                    # Sent, the broker would close the channel or the connection: fail
                    # it alone, as an encoding error below.
                    batch.outcomes[batch.sent] = refused
                    break
                try:
                    channel.basic_publish(
                        exchange=row.exchange,
                        routing_key=row.routing_key,
                        body=row.payload,
                        # pika's BasicProperties.__init__ carries no annotations
                        properties=BasicProperties(  # type: ignore[no-untyped-call]
                            content_type=row.content_type,
                            delivery_mode=PERSISTENT,
                            message_id=message_id,
                            # AMQP timestamps are unsigned: a row from before 1970 says 0.
                            timestamp=max(0, int(row.created_at.timestamp())),
                            headers=table,
                            # Checked by refusal(): only the properties of PROPERTY_NAMES.
                            **(row.properties if isinstance(row.properties, Mapping) else {}),
                        ),
                        mandatory=True,
                    )
                except UNENCODABLE as exc:
                    # pika encodes the whole message before writing any of it, so nothing
                    # of this row was sent. Fail it alone; the rows after it stay unsent
                    # and come back in the next round, behind it if they share its key.
                    batch.outcomes[batch.sent] = unencodable(row, exc)
                    break
                self._tag += 1
                batch.sent += 1
                batch.ids.add(message_id)
                buffered += len(row.payload)
                if buffered >= MAX_UNCONFIRMED_BYTES:
                    conn.release_held()
                    self._await_confirms(batch)
                    if batch.closed is not None:
                        break
                    conn.holding = True
                    buffered = 0
                    batch.sent_at = time.monotonic()  # the timeout of the part sent next
        except BaseException:
            self._forget(batch)
            raise
        finally:
            conn.release_held()
        return Sending(self, batch)

    def _forget(self, batch: Batch) -> None:
        self._confirms.forget(batch)

    def _flush(self, batch: Batch) -> bool:
        # A broker that does not take the frames at once is slow or stalled: leave the
        # wait, and the reason, to outcomes() and its confirm timeout. No callback says
        # the socket took the frames: the loop notices at the next confirm (of this batch
        # or the one before), which comes within milliseconds while the broker works.
        # (Looking every millisecond instead measured 0.921x raw pika against 0.947x.)
        timeout = SLOW_WAIT_S
        if batch.deadline is not None:
            timeout = min(timeout, batch.deadline - time.monotonic())

        def over() -> bool:
            return (
                batch.closed is not None
                or self._conn_error is not None
                or self.blocked
                or self._unwritten() == 0
            )

        self._run_until(over, max(0.0, timeout))
        written = self._conn is not None and self._unwritten() == 0
        return written and batch.closed is None and self._conn_error is None

    def _unwritten(self) -> int:
        """Bytes buffered for the socket; 0 once pika dropped a lost connection's transport."""
        conn = self._conn
        return 0 if conn is None else conn.unwritten()

    def _await_confirms(self, batch: Batch) -> None:
        """Run the I/O loop until every message of the batch is confirmed or its channel
        closed; otherwise give the connection up and raise PublishInterruptedError."""
        self._deadline = batch.deadline
        started = time.monotonic()
        slow: list[float] = []

        def on_slow(waited_s: float) -> None:
            slow.append(waited_s)
            log.warning(
                "publisher.confirms_delayed",
                waited_s=round(waited_s, 1),
                unconfirmed=batch.unconfirmed,
                confirm_timeout_s=self._confirm_timeout_s,
                blocked=self.blocked,
            )

        done = self._run_until(
            lambda: (
                batch.all_sent_settled() or batch.closed is not None or self._conn_error is not None
            ),
            self._confirm_timeout_s,
            patient_while_blocked=True,
            on_slow=on_slow,
            since=lambda: self._confirms_since(batch),
        )
        if slow and done:
            log.info("publisher.confirms_resumed", waited_s=round(time.monotonic() - started, 1))
        if self._conn_error is None and done:
            return
        if self._conn_error is not None:
            reason = describe_amqp_error(self._conn_error)
        elif self._should_stop():
            reason = "stopping while confirms were outstanding"
        elif self._deadline is not None and time.monotonic() >= self._deadline:
            reason = "the partition lease ran out while confirms were outstanding " + (
                "(the broker blocks publishers: a memory or disk alarm)"
                if self.blocked
                else f"({batch.unconfirmed} of a batch of {len(batch.rows)} unconfirmed "
                f"{time.monotonic() - batch.sent_at:.1f} s after it was sent; raise "
                "--lease-ttl or lower --batch-size)"
            )
        else:
            reason = f"no confirms within {self._confirm_timeout_s:g} s"
        outcomes = {
            row.id: outcome
            for row, outcome in zip(batch.rows, batch.outcomes, strict=True)
            if outcome is not None
        }
        # Give the connection up without closing it here: a graceful close waits (up
        # to CLOSE_TIMEOUT_S) for a peer that may be stalled, and the caller must
        # settle the confirmed rows before its lease ends. Its outage handling closes.
        if self._conn_error is None:
            self._conn_error = BrokerUnavailableError(reason)
        raise PublishInterruptedError(f"publishing interrupted: {reason}", outcomes)

    def _confirms_since(self, batch: Batch) -> float:
        """When the wait for the batch's confirms started to count: its send, or the
        broker's last confirm or unblock if later. A broker that keeps confirming is slow,
        not stalled; and a batch waited for after another does not count the other's."""
        return max(batch.sent_at, self._confirmed_at, self._unblocked_at)

    def _finish(self, batch: Batch) -> dict[int, Outcome]:
        return self._confirms.outcomes(batch, self._blame)

    def _blame(
        self, error: BaseException, unresolved: Sequence[OutboxRow], channels: Sequence[object]
    ) -> dict[int, Outcome]:
        """The rows to blame for a close that cut short the batches out on ``channels``
        (see ConfirmTracker.blame); a channel it closed is not used again."""
        culprits = self._culprits(error, unresolved)
        if any(self._channel is channel for channel in channels):
            self._channel = None
        failed = sum(not o.suspected for o in culprits.values())
        log.warning(
            "publisher.channel_closed",
            reason=describe_amqp_error(error),
            failed_rows=failed,
            suspect_rows=len(culprits) - failed,
            unsent_rows=len(unresolved) - len(culprits),
        )
        return culprits

    def _culprits(
        self, error: BaseException, unresolved: Sequence[OutboxRow]
    ) -> dict[int, Outcome]:
        """See :func:`outbox_relay.publisher_blame.culprits`."""
        return culprits(error, unresolved, missing_exchanges=self._missing_now)

    def _missing_now(self, exchanges: Collection[str]) -> dict[str, str]:
        """:meth:`missing_exchanges`, asking the broker again about every one."""
        self._exchanges_seen.clear()
        return self.missing_exchanges(exchanges)

    def missing_exchanges(self, exchanges: Collection[str]) -> dict[str, str]:
        """The exchanges among ``exchanges`` that do not exist, each with the error to record.

        Publishing to a missing exchange closes the channel and loses the confirms of
        everything in flight on it (so they would be sent twice); checking first avoids
        that. An exchange seen to exist is trusted for EXCHANGE_CHECK_TTL_S.
        """
        now = time.monotonic()
        missing: dict[str, str] = {}
        for exchange in exchanges:
            if not exchange or self._exchanges_seen.get(exchange, 0.0) > now:
                continue
            if self._exchange_exists(exchange):
                self._exchanges_seen[exchange] = now + EXCHANGE_CHECK_TTL_S
            else:
                missing[exchange] = (
                    f"exchange '{exchange}' does not exist on vhost '{self.vhost}': "
                    "run `outbox-relay topology apply` or create it"
                )
        return missing

    def _exchange_exists(self, exchange: str) -> bool:
        conn = self._require_connection()
        result: list[bool] = []
        probe: list[Channel] = []

        def on_open(channel: Channel) -> None:
            probe.append(channel)
            channel.add_on_close_callback(lambda _ch, _reason: self._note(result, False))
            channel.exchange_declare(
                exchange, passive=True, callback=lambda _frame: self._note(result, True)
            )

        conn.channel(on_open_callback=on_open)
        self._run_until(
            lambda: bool(result) or self._conn_error is not None, self._connect_timeout_s
        )
        if self._conn_error is not None:
            raise BrokerUnavailableError(
                f"connection lost: {describe_amqp_error(self._conn_error)}"
            )
        if probe and probe[0].is_open:
            probe[0].close()
        if not result:  # no answer is not an answer that the exchange is missing
            raise BrokerUnavailableError(
                f"the broker did not answer whether exchange {exchange!r} exists within "
                f"{self._connect_timeout_s:g} s"
            )
        return result[0]

    # -- waiting ------------------------------------------------------------------------

    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool:
        """Serve the connection (heartbeats) for up to ``timeout_s``; return early, with
        True, once ``wake_fd`` is readable."""
        conn = self._require_connection()
        self._fd_ready = False
        if wake_fd is not None:
            conn.ioloop.add_handler(wake_fd, self._on_fd_readable, PollEvents.READ)
        try:
            self._run_until(lambda: self._fd_ready or self._conn_error is not None, timeout_s)
        finally:
            if wake_fd is not None and self._conn is not None:
                self._conn.ioloop.remove_handler(wake_fd)
        if self._conn_error is not None:
            raise BrokerUnavailableError(
                f"connection lost: {describe_amqp_error(self._conn_error)}"
            )
        return self._fd_ready

    def _on_fd_readable(self, _fd: int, _events: int) -> None:
        self._fd_ready = True
        self._check()

    def _run_until(
        self,
        done: Callable[[], bool],
        timeout_s: float,
        *,
        patient_while_blocked: bool = False,
        on_slow: Callable[[float], None] | None = None,
        since: Callable[[], float] | None = None,
    ) -> bool:
        """Run the I/O loop until ``done()``; False on timeout or when asked to stop.
        The timeout counts from ``since()`` (monotonic, read at every turn; now by
        default); ``on_slow`` from now, so a batch waited for late is reported only when
        this wait is slow. A timeout is declared only after one turn of the loop has read
        what had arrived.

        With ``patient_while_blocked`` the timeout restarts while the broker blocks the
        connection (memory or disk alarm): publishing waits for it rather than giving up.
        ``on_slow`` is called once, with the seconds waited, after SLOW_WAIT_S.
        """
        conn = self._conn
        if conn is None:
            return done()
        waiting_since = time.monotonic()
        deadline = waiting_since + timeout_s
        looked = False
        while not done():
            now = time.monotonic()
            if since is not None:
                deadline = since() + timeout_s
            if on_slow is not None and now - waiting_since >= SLOW_WAIT_S:
                on_slow(now - waiting_since)
                on_slow = None
            if patient_while_blocked and self.blocked:
                deadline = now + timeout_s
            remaining = deadline - now
            if patient_while_blocked and self._deadline is not None:
                remaining = min(remaining, self._deadline - now)
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

    def _note(self, results: list[bool], value: bool) -> None:
        results.append(value)
        self._check()

    def _check(self) -> None:
        if self._until is not None and self._until() and self._conn is not None:
            self._conn.ioloop.stop()

    # -- pika callbacks -----------------------------------------------------------------

    def _on_open(self, _conn: object) -> None:
        self._opened = True
        self._check()

    def _on_open_error(self, _conn: object, error: BaseException | str) -> None:
        self._conn_error = error if isinstance(error, BaseException) else RuntimeError(error)
        self._check()

    def _on_connection_closed(self, _conn: object, reason: BaseException) -> None:
        self._channel = None
        if refused_by_broker(getattr(reason, "reply_code", None)) and self._confirms.unconfirmed:
            # A hard error over something a batch carried (501 FRAME_ERROR, ...): the
            # broker is up and the batches' rows are to blame, not an outage. Blame them
            # now, while the batches are known (connecting again forgets them).
            self._refused = reason
            for close in self._confirms.connection_refused(reason):
                self._confirms.blame(close, self._blame)
        else:
            self._conn_error = reason
        self._check()

    def _on_blocked(self, _conn: object, frame: Method[Any]) -> None:
        self.blocked = True
        log.warning("publisher.blocked", reason=getattr(frame.method, "reason", ""))
        self._check()

    def _on_unblocked(self, _conn: object, _frame: object) -> None:
        self.blocked = False
        self._unblocked_at = time.monotonic()
        log.info("publisher.unblocked")
        self._check()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is self._channel or self._channel is None:
            self._channel_error = reason
        self._confirms.channel_closed(channel, reason)
        self._check()

    def _on_return(
        self, _channel: Channel, method: Basic.Return, properties: BasicProperties, _body: bytes
    ) -> None:
        self._confirms.returned(
            properties.message_id or "",
            unroutable(
                method.exchange, method.routing_key, f"{method.reply_code} {method.reply_text}"
            ),
        )

    def _on_confirm(self, channel: Channel, frame: Method[Any]) -> None:
        self._confirmed_at = time.monotonic()
        method = frame.method
        self._confirms.confirmed(
            channel,
            method.delivery_tag,
            multiple=bool(method.multiple),
            ack=isinstance(method, Basic.Ack),
        )
        self._check()
