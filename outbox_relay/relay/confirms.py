"""What the publisher knows about the batches it sent (:class:`ConfirmTracker`): each
row's outcome by delivery tag, the broker's returns, and why a channel closed under it.
Pure book-keeping, driven by the broker's replies as :mod:`outbox_relay.publisher`
receives them; the publisher itself is left with the transport."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from outbox_relay.message import OutboxRow
from outbox_relay.relay.outcome import Outcome, Reason


class Returns:
    """Why the broker returned messages (unroutable) whose acks have not come yet.

    A return names no delivery tag, only the message id. Message ids need not be unique
    in the outbox, so ``Publisher.send`` never has two messages with one id out at
    once: an id then names one row, whatever its exchange, routing key or headers, and
    one row's return can neither be taken by another row's ack nor outlive its batch.
    """

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._reasons)

    def add(self, message_id: str, reason: str) -> None:
        self._reasons[message_id] = reason

    def take(self, row: OutboxRow) -> str | None:
        """Why ``row``, just acked, was returned; None when it was routed."""
        return self._reasons.pop(row.message_id, None)

    def forget(self, message_ids: Collection[str]) -> None:
        """Drop what the messages of a batch no longer tracked left: returns whose acks
        never came (their channel closed first)."""
        for message_id in message_ids:
            self._reasons.pop(message_id, None)

    def clear(self) -> None:
        self._reasons.clear()


class ChannelClose:
    """Why a channel closed, shared by every batch it cut short: the rows to blame are
    looked for once, among the unconfirmed rows of all of them."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.culprits: dict[int, Outcome] | None = None


class Batch:
    """Outcomes of one batch, indexed by delivery tag on the channel it went out on."""

    def __init__(
        self,
        rows: Sequence[OutboxRow],
        *,
        channel: object,
        first_tag: int,
        returned: Returns,
        deadline: float | None,
    ) -> None:
        self.rows = rows
        self.channel = channel
        self.first_tag = first_tag
        self.deadline = deadline
        # The confirm timeout counts from here, or from a later confirm (see
        # outbox_relay.publisher.confirming); from its last part's start, for a batch
        # sent in parts of MAX_UNCONFIRMED_BYTES.
        self.sent_at = time.monotonic()
        self.outcomes: list[Outcome | None] = [None] * len(rows)
        self.sent = 0
        self.ids: set[str] = set()  # message ids of the rows sent
        self.settled = 0
        self._lowest = 0
        self.returned = returned  # the publisher's
        self.closed: ChannelClose | None = None

    def all_sent_settled(self) -> bool:
        return self.settled == self.sent

    @property
    def unconfirmed(self) -> int:
        return self.sent - self.settled

    def settle(self, tag: int, *, multiple: bool, ack: bool) -> None:
        index = tag - self.first_tag
        if multiple:
            # An ack of many may end past this batch (the next one went out behind it).
            index = min(index, self.sent - 1)
        elif index < 0 or index >= self.sent:
            return
        for i in range(self._lowest, index + 1) if multiple else (index,):
            if self.outcomes[i] is None:
                self.outcomes[i] = self._outcome(i, ack=ack)
                self.settled += 1
        while self._lowest < self.sent and self.outcomes[self._lowest] is not None:
            self._lowest += 1

    def _outcome(self, index: int, *, ack: bool) -> Outcome:
        if not ack:
            return Outcome.failed(
                "the broker nacked the message (an internal error, or a queue limit with "
                "overflow=reject-publish)",
                Reason.NACKED,
            )
        # Most batches have no returns: no message id to format for each ack then.
        returned = self.returned.take(self.rows[index]) if self.returned else None
        return Outcome.failed(returned, Reason.UNROUTABLE) if returned else Outcome.confirmed()

    def known(self) -> dict[int, Outcome]:
        """The outcomes known so far (confirmed, or refused before sending), by row id."""
        return {
            row.id: outcome
            for row, outcome in zip(self.rows, self.outcomes, strict=True)
            if outcome is not None
        }

    def by_row(self, unresolved: Callable[[OutboxRow], Outcome]) -> dict[int, Outcome]:
        return {
            row.id: outcome if outcome is not None else unresolved(row)
            for row, outcome in zip(self.rows, self.outcomes, strict=True)
        }


# Finds the rows to blame for a close among its unresolved rows, given the channels of
# the batches it cut short: the publisher's, which knows the broker's replies.
FindCulprits = Callable[[BaseException, Sequence[OutboxRow], Sequence[object]], dict[int, Outcome]]


class ConfirmTracker:
    """The batches out on one connection and what the broker said about them, oldest
    first. The broker's acks and nacks (:meth:`confirmed`), returns (:meth:`returned`)
    and channel or connection closes (:meth:`channel_closed`, :meth:`connection_refused`)
    come in as the publisher receives them; each batch's outcomes come out
    (:meth:`outcomes`). Pure: channels are opaque, and the rows to blame for a close are
    found by the function passed in."""

    def __init__(self) -> None:
        self._in_flight: list[Batch] = []
        self._returned = Returns()
        # Channels the broker nacked a message on (see nacked_on).
        self._nacked: list[object] = []

    def start(
        self,
        rows: Sequence[OutboxRow],
        *,
        channel: object,
        first_tag: int,
        deadline: float | None,
    ) -> Batch:
        """A batch about to go out on ``channel``, its first row as ``first_tag``."""
        batch = Batch(
            rows, channel=channel, first_tag=first_tag, returned=self._returned, deadline=deadline
        )
        self._in_flight.append(batch)
        return batch

    def ids_out(self, but: Batch) -> set[str]:
        """Message ids of the batches out besides ``but`` (see :class:`Returns`)."""
        return set().union(*(b.ids for b in self._in_flight if b is not but))

    @property
    def batches_out(self) -> int:
        """Batches sent whose confirms are not all in."""
        return sum(1 for batch in self._in_flight if batch.unconfirmed)

    @property
    def returns_pending(self) -> bool:
        """Returns kept for acks still to come."""
        return bool(self._returned)

    def forget(self, batch: Batch) -> None:
        """No longer track ``batch`` (its outcomes were taken, or it was given up)."""
        if batch in self._in_flight:
            self._in_flight.remove(batch)
        if not self._in_flight:
            self._returned.clear()
        elif self._returned:
            self._returned.forget(batch.ids)

    def clear(self) -> None:
        """The connection is gone, and with it every batch out."""
        self._in_flight.clear()
        self._returned.clear()
        self._nacked.clear()

    def nacked_on(self, channel: object) -> bool:
        """The broker nacked a message on ``channel`` and every batch sent on it has all
        its confirms: time to publish on a fresh channel (see Publisher.send)."""
        return any(c is channel for c in self._nacked) and not any(
            batch.channel is channel and batch.unconfirmed for batch in self._in_flight
        )

    def forget_channel(self, channel: object) -> None:
        self._nacked = [c for c in self._nacked if c is not channel]

    # -- the broker's replies -------------------------------------------------------------

    def confirmed(self, channel: object, tag: int, *, multiple: bool, ack: bool) -> None:
        """An ack (or a nack) of ``tag`` on ``channel``, of every tag up to it if
        ``multiple``: it may reach from one batch into the next."""
        for batch in self._in_flight:
            if batch.channel is channel:
                batch.settle(tag, multiple=multiple, ack=ack)
        if not ack and not any(c is channel for c in self._nacked):
            self._nacked.append(channel)

    def returned(self, message_id: str, reason: str) -> None:
        """The broker returned the message (unroutable); its ack follows. A late return
        of a message no longer tracked has no ack left to wait for."""
        if message_id and any(message_id in batch.ids for batch in self._in_flight):
            self._returned.add(message_id, reason)

    def channel_closed(self, channel: object, error: BaseException) -> None:
        """``channel`` closed: the batches out on it are cut short, by one close."""
        close = ChannelClose(error)
        for batch in self._in_flight:
            if batch.channel is channel and batch.closed is None:
                batch.closed = close

    @property
    def unconfirmed(self) -> bool:
        """Some batch out still waits for confirms."""
        return any(batch.unconfirmed for batch in self._in_flight)

    def connection_refused(self, error: BaseException) -> list[ChannelClose]:
        """The broker closed the connection over something the batches out carried:
        every batch not cut short yet is, by one close. The closes with that error, to
        blame while the batches are known (connecting again forgets them)."""
        close = ChannelClose(error)
        for batch in self._in_flight:
            if batch.closed is None:
                batch.closed = close
        closes: list[ChannelClose] = []
        for batch in self._in_flight:
            closed = batch.closed
            if closed is not None and closed.error is error and closed not in closes:
                closes.append(closed)
        return closes

    # -- outcomes -------------------------------------------------------------------------

    def blame(self, close: ChannelClose, find: FindCulprits) -> dict[int, Outcome]:
        """The outcomes of the rows to blame for ``close``, found once, among the
        unconfirmed rows of every batch the close cut short, in the order they went
        out: the culprit may be in a later batch than the one asked about."""
        if close.culprits is None:
            cut = [b for b in self._in_flight if b.closed is close]
            unresolved = [
                row
                for b in cut
                for row, outcome in zip(b.rows, b.outcomes, strict=True)
                if outcome is None
            ]
            close.culprits = find(close.error, unresolved, [b.channel for b in cut])
        return close.culprits

    def outcomes(self, batch: Batch, find: FindCulprits) -> dict[int, Outcome]:
        """Each row's outcome: as the broker confirmed it, failed for a close it caused,
        or UNSENT (to go again) when its confirm never came."""
        close = batch.closed
        if close is None:
            return batch.by_row(lambda _row: Outcome.unsent())
        culprits = self.blame(close, find)
        return batch.by_row(lambda row: culprits.get(row.id, Outcome.unsent()))
