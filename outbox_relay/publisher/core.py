"""The publisher: rows out to RabbitMQ on one confirm-mode channel, their outcomes back.

See :mod:`outbox_relay.publisher` for how the work is shared among its modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import structlog
from pika.channel import Channel

from outbox_relay import pika_doubles
from outbox_relay.amqp_url import describe_amqp_error
from outbox_relay.broker_nodes import BrokerNodes, Node
from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_S
from outbox_relay.errors import BrokerUnavailableError, PublishInterruptedError
from outbox_relay.message import OutboxRow
from outbox_relay.publisher.blame import culprits
from outbox_relay.publisher.confirming import Confirms, Sending
from outbox_relay.publisher.exchanges import ExchangeCheck
from outbox_relay.publisher.link import ConnectionFactory, Link
from outbox_relay.publisher.pika_transport import ChunkedConnection
from outbox_relay.publisher.rows import UNENCODABLE, checked, properties, unencodable
from outbox_relay.relay.confirms import Batch
from outbox_relay.relay.outcome import Outcome, refused_by_broker
from outbox_relay.urls import redact_url

CONNECT_TIMEOUT_S = 10.0
CONFIRM_TIMEOUT_S = 30.0
# Wait for the confirms of what a batch buffered before buffering more than this (per
# batch: with two batches out, up to twice this is unconfirmed).
MAX_UNCONFIRMED_BYTES = 32 * 1024 * 1024

log = structlog.get_logger("outbox_relay.publisher")


class Publisher:
    """One AMQP connection and one confirm-mode channel, used from one thread.

    ``connection_factory`` makes the pika connection (a :class:`ChunkedConnection` by
    default); tests pass one that makes a fake.
    """

    def __init__(
        self,
        *,
        url: str,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S,
        should_stop: Callable[[], bool] = lambda: False,
        on_node: Callable[[str], None] | None = None,
        connection_factory: ConnectionFactory = ChunkedConnection,
    ) -> None:
        pika_doubles.install()  # float headers as AMQP doubles
        self._url = url
        # Several nodes of a cluster: each connect() tries them in turn (broker_nodes).
        self.nodes = BrokerNodes(url, dead_peer_timeout_s=dead_peer_timeout_s, on_node=on_node)
        self._params = self.nodes.first.params
        self._link = Link(
            connect_timeout_s=connect_timeout_s,
            should_stop=should_stop,
            connection_factory=connection_factory,
            on_closed=self._on_connection_closed,
            on_discard=self._on_discard,
        )
        self._confirms = Confirms(
            self._link,
            confirm_timeout_s=confirm_timeout_s,
            should_stop=should_stop,
            blame=self._blame,
        )
        self._exchanges = ExchangeCheck(
            self._link, connection=self._require_connection, vhost=lambda: self.vhost
        )
        # Why the broker closed the connection over what was out (not an outage): the
        # rows are blamed, and the next use of the publisher connects again.
        self._refused: BaseException | None = None
        self._channel: Channel | None = None
        self._channel_error: BaseException | None = None
        # Channels this publisher closed itself (see _replace_nacking_channel): their
        # close is no error of the channel in use.
        self._retired: list[Channel] = []
        self._tag = 0
        # Rows refused() passed on this connection, and their header tables.
        self._passed: dict[int, dict[str, Any] | None] = {}

    @property
    def batches_out(self) -> int:
        """Batches sent whose confirms are not all in."""
        return self._confirms.tracker.batches_out

    @property
    def vhost(self) -> str:
        return str(self._params.virtual_host)

    @property
    def connected(self) -> bool:
        return self._link.usable

    @property
    def blocked(self) -> bool:
        """The broker blocks publishers on this connection (a memory or disk alarm)."""
        return self._link.blocked

    @property
    def frame_max(self) -> int:
        """The largest frame the broker takes on this connection (negotiated when it
        opened; 0 for no limit)."""
        return self._link.frame_max

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

    def missing_exchanges(self, exchanges: Collection[str]) -> dict[str, str]:
        """The exchanges among ``exchanges`` that do not exist, each with the error to record.

        Publishing to a missing exchange closes the channel and loses the confirms of
        everything in flight on it (so they would be sent twice); checking first avoids
        that. An exchange seen to exist is trusted for EXCHANGE_CHECK_TTL_S.
        """
        return self._exchanges.missing(exchanges)

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection and the confirm-mode channel on the first node that
        accepts it (see :mod:`outbox_relay.broker_nodes`); raises BrokerUnavailableError."""
        self.nodes.open(self._connect_to)

    def _connect_to(self, node: Node) -> None:
        self._params, self._url = node.params, node.url
        self._refused = None
        self._link.open(self._params, self._url)
        self._open_channel()
        log.info("publisher.connected", url=redact_url(self._url), node=node.name)

    def close(self) -> None:
        """Close the connection; never raises."""
        self._link.close()

    def _on_discard(self) -> None:
        self._channel = None
        self._retired.clear()
        self._passed = {}
        self._confirms.tracker.clear()

    def _replace_nacking_channel(self, channel: Channel) -> None:
        """Close a channel the broker nacked messages on, once nothing is out on it; the
        next batch goes out on a fresh one. The broker keeps per-channel state for the
        queues a channel publishes to: after the leader of a quorum queue was lost, a
        channel of RabbitMQ 3.10 was seen nacking every publish for minutes while a new
        channel on the same connection, and other clients, published to the queue."""
        log.info("publisher.channel_replaced", reason="the broker nacked messages on it")
        self._confirms.tracker.forget_channel(channel)
        self._channel = None
        self._retired.append(channel)
        try:
            channel.close()
        except Exception as exc:  # noqa: BLE001 - a channel closing already; a fresh one follows
            log.debug("publisher.channel_close_failed", error=str(exc))
            self._retired.remove(channel)

    def _open_channel(self) -> None:
        if self._refused is not None:
            self._connect_after_refusal()  # which opens the channel
            return
        link = self._link
        conn = self._require_connection()
        self._channel, self._channel_error, self._tag = None, None, 0
        ready: list[bool] = []

        def on_open(channel: Channel) -> None:
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_return_callback(self._confirms.on_return)
            channel.confirm_delivery(
                lambda frame: self._confirms.on_confirm(channel, frame),
                callback=lambda _frame: link.note(ready, True),
            )
            self._channel = channel

        conn.channel(on_open_callback=on_open)
        ok = link.run_until(
            lambda: bool(ready) or self._channel_error is not None or link.error is not None,
            link.connect_timeout_s,
        )
        if not ok or not ready:
            reason = describe_amqp_error(self._channel_error or link.error)
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
        return self._link.require(self._url)

    # -- publishing ---------------------------------------------------------------------

    def send(self, rows: Sequence[OutboxRow], *, deadline: float | None = None) -> Sending:
        """Publish ``rows`` in order; their outcomes come from the returned
        :class:`Sending`. Another batch may be sent before those outcomes are asked for.

        Rows the broker refused are FAILED with a reason; rows that never reached the
        broker because the channel closed under them, or were not sent because a message
        with their id was out already (and the rows after them), are UNSENT. When the
        connection is lost, confirms do not arrive within the confirm timeout, or the
        monotonic ``deadline`` (the end of the caller's lease) passes, the outcomes say
        so (:class:`~outbox_relay.relay.ports.SendResult`); ``send`` itself raises
        PublishInterruptedError only when the deadline passed before anything was sent,
        and BrokerUnavailableError when there is no channel to send on.
        """
        if deadline is not None and time.monotonic() >= deadline:
            raise PublishInterruptedError("the partition lease ran out before publishing")
        if self._channel is not None and self._confirms.tracker.nacked_on(self._channel):
            self._replace_nacking_channel(self._channel)
        if self._channel is None or not self._channel.is_open:
            self._open_channel()
        channel = self._channel
        assert channel is not None  # noqa: S101 - _open_channel raised otherwise
        conn = self._require_connection()
        batch = self._confirms.tracker.start(
            rows, channel=channel, first_tag=self._tag + 1, deadline=deadline
        )
        try:
            interrupted = self._write(batch, channel, conn)
        except BaseException:
            self._confirms.forget(batch)
            raise
        return Sending(self._confirms, batch, interrupted=interrupted)

    def _write(
        self, batch: Batch, channel: Channel, conn: ChunkedConnection
    ) -> PublishInterruptedError | None:
        """Publish the batch's rows on ``channel``, in order, until one may not go (see
        :meth:`send`); why the confirms of a part of it were not all waited for."""
        frame_max = self.frame_max
        # Rows refused() just passed on this connection, with their header tables; the
        # check costs from half a microsecond a row (no headers) to a few, a few percent
        # of publishing it.
        passed, self._passed = self._passed, {}
        # Message ids of the batches already out (see Returns).
        out = self._confirms.tracker.ids_out(but=batch)
        conn.holding = True
        try:
            buffered = 0
            for row in batch.rows:
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
                        properties=properties(row, table),
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
                    interrupted = self._confirms.wait(batch)
                    if interrupted is not None:
                        return interrupted
                    if batch.closed is not None:
                        break
                    conn.holding = True
                    buffered = 0
                    batch.sent_at = time.monotonic()  # the timeout of the part sent next
        finally:
            conn.release_held()
        return None

    def _blame(
        self, error: BaseException, unresolved: Sequence[OutboxRow], channels: Sequence[object]
    ) -> dict[int, Outcome]:
        """The rows to blame for a close that cut short the batches out on ``channels``
        (see ConfirmTracker.blame); a channel it closed is not used again."""
        blamed = culprits(
            error,
            unresolved,
            missing_exchanges=lambda names: self._exchanges.missing(names, fresh=True),
        )
        if any(self._channel is channel for channel in channels):
            self._channel = None
        failed = sum(not o.suspected for o in blamed.values())
        log.warning(
            "publisher.channel_closed",
            reason=describe_amqp_error(error),
            failed_rows=failed,
            suspect_rows=len(blamed) - failed,
            unsent_rows=len(unresolved) - len(blamed),
        )
        return blamed

    # -- waiting ------------------------------------------------------------------------

    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool:
        """Serve the connection (heartbeats) for up to ``timeout_s``; return early, with
        True, once ``wake_fd`` is readable."""
        return self._link.wait(self._require_connection(), timeout_s, wake_fd=wake_fd)

    # -- pika callbacks -----------------------------------------------------------------

    def _on_connection_closed(self, reason: BaseException) -> bool:
        self._channel = None
        tracker = self._confirms.tracker
        if refused_by_broker(getattr(reason, "reply_code", None)) and tracker.unconfirmed:
            # A hard error over something a batch carried (501 FRAME_ERROR, ...): the
            # broker is up and the batches' rows are to blame, not an outage. Blame them
            # now, while the batches are known (connecting again forgets them).
            self._refused = reason
            for close in tracker.connection_refused(reason):
                tracker.blame(close, self._blame)
            return True
        return False

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if any(c is channel for c in self._retired):
            self._retired = [c for c in self._retired if c is not channel]
            return  # closed by _replace_nacking_channel, with nothing out on it
        if channel is self._channel or self._channel is None:
            self._channel_error = reason
        self._confirms.tracker.channel_closed(channel, reason)
        self._link.check()
