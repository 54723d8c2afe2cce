"""What the publisher knows about a batch it sent: each row's outcome by delivery tag,
the broker's returns, and why a channel closed under it. Pure book-keeping, driven by
the broker's replies as :mod:`outbox_relay.publisher` receives them."""

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
        # Publisher._confirms_since); from its last part's start, for a batch sent in
        # parts of MAX_UNCONFIRMED_BYTES.
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

    def by_row(self, unresolved: Callable[[OutboxRow], Outcome]) -> dict[int, Outcome]:
        return {
            row.id: outcome if outcome is not None else unresolved(row)
            for row, outcome in zip(self.rows, self.outcomes, strict=True)
        }
