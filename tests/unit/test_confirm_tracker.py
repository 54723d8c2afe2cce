"""The confirm tracker: the broker's acks, nacks, returns and closes in; outcomes out."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.message import OutboxRow
from outbox_relay.relay.confirms import Batch, ConfirmTracker
from outbox_relay.relay.outcome import Outcome, Reason, Status
from tests.support.rows import sized_row

CHANNEL = object()
OTHER = object()


class Blamer:
    """Blames the rows it is told to, and records what it was asked."""

    def __init__(self, culprits: dict[int, Outcome] | None = None) -> None:
        self.culprits = culprits or {}
        self.asked: list[list[int]] = []

    def __call__(
        self, error: BaseException, unresolved: Sequence[OutboxRow], channels: Sequence[object]
    ) -> dict[int, Outcome]:
        self.asked.append([row.id for row in unresolved])
        return {i: o for i, o in self.culprits.items() if i in {r.id for r in unresolved}}


def sent(
    tracker: ConfirmTracker, ids: Sequence[int], *, first_tag: int, channel: object = CHANNEL
) -> Batch:
    """A batch handed to the broker whole, its rows tagged from ``first_tag``."""
    rows = [sized_row(i, 10) for i in ids]
    batch = tracker.start(rows, channel=channel, first_tag=first_tag, deadline=None)
    batch.sent = len(rows)
    batch.ids = {row.message_id for row in rows}
    return batch


class TestAcks:
    def test_an_ack_of_many_reaching_into_the_next_batch_settles_both(self) -> None:
        tracker = ConfirmTracker()
        first = sent(tracker, [1, 2, 3], first_tag=1)
        second = sent(tracker, [4, 5, 6], first_tag=4)
        tracker.confirmed(CHANNEL, 5, multiple=True, ack=True)
        assert (first.unconfirmed, second.unconfirmed) == (0, 1)
        assert tracker.batches_out == 1
        assert tracker.outcomes(first, Blamer()) == {i: Outcome.confirmed() for i in (1, 2, 3)}
        assert tracker.outcomes(second, Blamer())[6] == Outcome.unsent()

    def test_a_nack_fails_the_row(self) -> None:
        tracker = ConfirmTracker()
        batch = sent(tracker, [1, 2], first_tag=1)
        tracker.confirmed(CHANNEL, 2, multiple=False, ack=False)
        tracker.confirmed(CHANNEL, 1, multiple=False, ack=True)
        outcomes = tracker.outcomes(batch, Blamer())
        assert outcomes[1] == Outcome.confirmed()
        assert outcomes[2].reason is Reason.NACKED

    def test_acks_on_another_channel_settle_nothing(self) -> None:
        tracker = ConfirmTracker()
        batch = sent(tracker, [1], first_tag=1)
        tracker.confirmed(OTHER, 1, multiple=True, ack=True)
        assert batch.unconfirmed == 1

    @given(st.lists(st.booleans(), min_size=1, max_size=30), st.integers(1, 5))
    def test_a_returned_row_fails_as_unroutable_and_the_others_are_confirmed(
        self, routed: list[bool], group: int
    ) -> None:
        tracker = ConfirmTracker()
        batch = sent(tracker, list(range(1, len(routed) + 1)), first_tag=1)
        for tag in range(1, len(routed) + 1, group):
            last = min(tag + group - 1, len(routed))
            for i in range(tag, last + 1):
                if not routed[i - 1]:
                    tracker.returned(batch.rows[i - 1].message_id, "312 NO_ROUTE")
            tracker.confirmed(CHANNEL, last, multiple=True, ack=True)
        outcomes = tracker.outcomes(batch, Blamer())
        for i, was_routed in enumerate(routed, start=1):
            assert (outcomes[i] == Outcome.confirmed()) is was_routed
            assert was_routed or outcomes[i].reason is Reason.UNROUTABLE
        tracker.forget(batch)
        assert not tracker.returns_pending

    def test_a_late_return_of_a_message_no_longer_tracked_is_dropped(self) -> None:
        tracker = ConfirmTracker()
        batch = sent(tracker, [1], first_tag=1)
        tracker.forget(batch)
        tracker.returned(batch.rows[0].message_id, "312 NO_ROUTE")
        assert not tracker.returns_pending


class TestCloses:
    def test_a_close_is_blamed_once_across_the_batches_it_cut(self) -> None:
        tracker = ConfirmTracker()
        first = sent(tracker, [1, 2, 3], first_tag=1)
        second = sent(tracker, [4, 5, 6], first_tag=4)
        tracker.confirmed(CHANNEL, 1, multiple=False, ack=True)
        tracker.channel_closed(CHANNEL, RuntimeError("406 too large"))
        too_large = Outcome.failed("too large", Reason.TOO_LARGE)
        blamer = Blamer({5: too_large})

        first_outcomes = tracker.outcomes(first, blamer)
        tracker.forget(first)
        second_outcomes = tracker.outcomes(second, blamer)

        assert blamer.asked == [[2, 3, 4, 5, 6]], "the unconfirmed rows of both, once"
        assert first_outcomes[1] == Outcome.confirmed()
        assert [first_outcomes[i].status for i in (2, 3)] == [Status.UNSENT] * 2
        assert second_outcomes[5] == too_large
        assert [second_outcomes[i].status for i in (4, 6)] == [Status.UNSENT] * 2

    def test_a_close_of_another_channel_cuts_nothing(self) -> None:
        tracker = ConfirmTracker()
        batch = sent(tracker, [1], first_tag=1)
        tracker.channel_closed(OTHER, RuntimeError("closed"))
        assert batch.closed is None
        assert tracker.outcomes(batch, Blamer()) == {1: Outcome.unsent()}

    def test_a_connection_refused_over_a_message_cuts_every_batch_out_by_one_close(
        self,
    ) -> None:
        tracker = ConfirmTracker()
        error = RuntimeError("501 FRAME_ERROR")
        first = sent(tracker, [1, 2], first_tag=1)
        second = sent(tracker, [3], first_tag=3)
        tracker.confirmed(CHANNEL, 2, multiple=True, ack=True)
        assert tracker.unconfirmed
        tracker.channel_closed(CHANNEL, error)  # pika: each channel, then the connection
        closes = tracker.connection_refused(error)
        assert len(closes) == 1
        assert first.closed is second.closed is closes[0]
        blamer = Blamer({3: Outcome.failed("refused", Reason.BROKER_REFUSED)})
        tracker.blame(closes[0], blamer)
        tracker.clear()  # connecting again forgets the batches: the blame was kept
        assert tracker.outcomes(second, Blamer())[3].reason is Reason.BROKER_REFUSED
        assert tracker.outcomes(first, Blamer()) == {
            1: Outcome.confirmed(),
            2: Outcome.confirmed(),
        }

    def test_message_ids_out_are_those_of_the_other_batches(self) -> None:
        tracker = ConfirmTracker()
        first = sent(tracker, [1], first_tag=1)
        second = sent(tracker, [2], first_tag=2)
        assert tracker.ids_out(but=second) == first.ids
