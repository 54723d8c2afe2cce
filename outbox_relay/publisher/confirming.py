"""Waiting for the broker's confirms of the batches out.

:class:`Confirms` holds the :class:`~outbox_relay.relay.confirms.ConfirmTracker` of the
publisher's connection, takes the broker's acks, nacks and returns from pika's channel
callbacks, and runs the connection's I/O loop until a batch is confirmed, its channel
closed, the confirm timeout passed or the lease ran out. :class:`Sending` is a batch
handed to the broker, as :meth:`Publisher.send <outbox_relay.publisher.Publisher.send>`
returns it: it asks :class:`Confirms` through its public methods only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from pika.channel import Channel
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from outbox_relay.amqp_url import describe_amqp_error
from outbox_relay.errors import BrokerUnavailableError, PublishInterruptedError
from outbox_relay.publisher.link import SLOW_WAIT_S, Link
from outbox_relay.relay.confirms import Batch, ConfirmTracker, FindCulprits
from outbox_relay.relay.outcome import unroutable
from outbox_relay.relay.ports import SendResult

log = structlog.get_logger("outbox_relay.publisher")


class Confirms:
    """The batches out on one connection, and the wait for the broker's replies to them.

    ``blame`` finds the rows to blame for a close (see ConfirmTracker.blame).
    """

    def __init__(
        self,
        link: Link,
        *,
        confirm_timeout_s: float,
        should_stop: Callable[[], bool],
        blame: FindCulprits,
    ) -> None:
        self.tracker = ConfirmTracker()  # the batches out, and the broker's replies
        self._link = link
        self.confirm_timeout_s = confirm_timeout_s
        self._should_stop = should_stop
        self._blame = blame
        # When the broker last confirmed something: a confirm timeout counts from the
        # later of this, the broker's last unblock and the batch's send.
        self._confirmed_at = 0.0

    # -- pika's channel callbacks -------------------------------------------------------

    def on_confirm(self, channel: Channel, frame: Method[Any]) -> None:
        """An ack or a nack from the broker on ``channel``."""
        self._confirmed_at = time.monotonic()
        method = frame.method
        self.tracker.confirmed(
            channel,
            method.delivery_tag,
            multiple=bool(method.multiple),
            ack=isinstance(method, Basic.Ack),
        )
        self._link.check()

    def on_return(
        self, _channel: Channel, method: Basic.Return, properties: BasicProperties, _body: bytes
    ) -> None:
        """A message the broker returned (unroutable); its ack follows."""
        self.tracker.returned(
            properties.message_id or "",
            unroutable(
                method.exchange, method.routing_key, f"{method.reply_code} {method.reply_text}"
            ),
        )

    # -- a batch's confirms -------------------------------------------------------------

    def flush(self, batch: Batch) -> bool:
        """See :meth:`Sending.flush`."""
        # A broker that does not take the frames at once is slow or stalled: leave the
        # wait, and the reason, to the outcomes and their confirm timeout. No callback
        # says the socket took the frames: the loop notices at the next confirm (of this
        # batch or the one before), which comes within milliseconds while the broker
        # works. (Looking every millisecond instead measured 0.921x raw pika against
        # 0.947x.)
        link = self._link
        timeout = SLOW_WAIT_S
        if batch.deadline is not None:
            timeout = min(timeout, batch.deadline - time.monotonic())

        def over() -> bool:
            return (
                batch.closed is not None
                or link.error is not None
                or link.blocked
                or link.unwritten() == 0
            )

        link.run_until(over, max(0.0, timeout))
        written = link.conn is not None and link.unwritten() == 0
        return written and batch.closed is None and link.error is None

    def wait(self, batch: Batch) -> PublishInterruptedError | None:
        """Run the I/O loop until every message of the batch is confirmed or its channel
        closed. Otherwise give the connection up (without closing it) and return why."""
        link = self._link
        started = time.monotonic()
        slow: list[float] = []

        def on_slow(waited_s: float) -> None:
            slow.append(waited_s)
            log.warning(
                "publisher.confirms_delayed",
                waited_s=round(waited_s, 1),
                unconfirmed=batch.unconfirmed,
                confirm_timeout_s=self.confirm_timeout_s,
                blocked=link.blocked,
            )

        done = link.run_until(
            lambda: batch.all_sent_settled() or batch.closed is not None or link.error is not None,
            self.confirm_timeout_s,
            patient_while_blocked=True,
            deadline=batch.deadline,
            on_slow=on_slow,
            since=lambda: self._since(batch),
        )
        if slow and done:
            log.info("publisher.confirms_resumed", waited_s=round(time.monotonic() - started, 1))
        if link.error is None and done:
            return None
        reason = self._why_not(batch)
        # Give the connection up without closing it here: a graceful close waits (up
        # to CLOSE_TIMEOUT_S) for a peer that may be stalled, and the caller must
        # settle the confirmed rows before its lease ends. Its outage handling closes.
        if link.error is None:
            link.error = BrokerUnavailableError(reason)
        return PublishInterruptedError(f"publishing interrupted: {reason}")

    def _why_not(self, batch: Batch) -> str:
        """Why the wait for the batch's confirms ended before they all came."""
        link = self._link
        if link.error is not None:
            return describe_amqp_error(link.error)
        if self._should_stop():
            return "stopping while confirms were outstanding"
        if batch.deadline is not None and time.monotonic() >= batch.deadline:
            return "the partition lease ran out while confirms were outstanding " + (
                "(the broker blocks publishers: a memory or disk alarm)"
                if link.blocked
                else f"({batch.unconfirmed} of a batch of {len(batch.rows)} unconfirmed "
                f"{time.monotonic() - batch.sent_at:.1f} s after it was sent; raise "
                "--lease-ttl or lower --batch-size)"
            )
        return f"no confirms within {self.confirm_timeout_s:g} s"

    def _since(self, batch: Batch) -> float:
        """When the wait for the batch's confirms started to count: its send, or the
        broker's last confirm or unblock if later. A broker that keeps confirming is slow,
        not stalled; and a batch waited for after another does not count the other's."""
        return max(batch.sent_at, self._confirmed_at, self._link.unblocked_at)

    def result(self, batch: Batch) -> SendResult:
        """Wait for the batch's confirms (:meth:`wait`); each row's outcome, or, when the
        wait was cut short, those known and why."""
        interrupted = self.wait(batch)
        if interrupted is not None:
            return SendResult(batch.known(), interrupted)
        return SendResult(self.tracker.outcomes(batch, self._blame))

    def forget(self, batch: Batch) -> None:
        """Stop tracking ``batch``: confirms still to come for it are ignored."""
        self.tracker.forget(batch)


class Sending:
    """A batch handed to the broker: ``outcomes()`` waits for its confirms.

    ``interrupted`` is set when sending it was cut short (see :meth:`Publisher.send
    <outbox_relay.publisher.Publisher.send>`): ``outcomes()`` then returns at once.
    """

    def __init__(
        self, confirms: Confirms, batch: Batch, *, interrupted: PublishInterruptedError | None
    ) -> None:
        self._confirms = confirms
        self._batch = batch
        self._interrupted = interrupted

    @property
    def interrupted(self) -> PublishInterruptedError | None:
        return self._interrupted

    def flush(self) -> bool:
        """Serve the connection until the batch's frames are all written to the socket
        (``send`` only buffers them: pika writes from its I/O loop), so the broker has
        them to work on while the caller does something else. False when that did not
        happen: the channel or connection closed, the broker blocks publishers, or the
        socket did not take them within SLOW_WAIT_S or before the lease deadline (past
        it, the loop still turns once). An interruption is reported by ``outcomes()``."""
        return self._confirms.flush(self._batch)

    def outcomes(self) -> SendResult:
        """Each row's outcome, keyed by row id, once every message was confirmed or the
        channel closed; when the connection was lost or stalled first, or the lease ran
        out, the outcomes known by then and the interruption (see :class:`SendResult`)."""
        try:
            if self._interrupted is not None:
                return SendResult(self._batch.known(), self._interrupted)
            return self._confirms.result(self._batch)
        finally:
            self._confirms.forget(self._batch)

    def abandon(self) -> None:
        """Stop tracking the batch: confirms still to come for it are ignored."""
        self._confirms.forget(self._batch)
