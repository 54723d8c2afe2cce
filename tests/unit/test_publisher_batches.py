"""The publisher with two batches out, driven by the broker's replies: the publisher runs
on a broker in memory (tests/support/fake_amqp.py) through its public methods; the
confirm book-keeping it keeps is tested on its own (ConfirmTracker)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pika.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay.amqp_fields import DEFAULT_FRAME_MAX_BYTES
from outbox_relay.errors import BrokerUnavailableError, PublishInterruptedError
from outbox_relay.message import OutboxRow
from outbox_relay.publisher import Publisher, Sending, SendResult, checked, core, refusal
from outbox_relay.publisher.blame import culprits
from outbox_relay.relay.confirms import Batch, ConfirmTracker
from outbox_relay.relay.outcome import Outcome, Reason, Status
from tests.support.fake_amqp import FakeBroker, FakeChannel, Published
from tests.support.fakes import TableStore, leave_relays, relay_for
from tests.support.rows import sized_row

CHANNEL: Any = object()  # the channel both batches went out on
URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def by_the_brokers_reply(
    error: BaseException, unresolved: Sequence[OutboxRow], channels: Sequence[object]
) -> dict[int, Outcome]:
    """The publisher's blame of a close, with every exchange there."""
    return culprits(error, unresolved, missing_exchanges=lambda _exchanges: {})


def sent(tracker: ConfirmTracker, rows: list[OutboxRow], first_tag: int) -> Batch:
    """A batch handed to the broker whole on CHANNEL."""
    batch = tracker.start(rows, channel=CHANNEL, first_tag=first_tag, deadline=None)
    batch.sent = len(rows)
    batch.ids = {str(row.message_id) for row in rows}
    return batch


def test_a_close_is_blamed_on_the_culprit_in_the_later_batch_and_the_rest_go_again() -> None:
    tracker = ConfirmTracker()
    first = sent(tracker, [sized_row(1, 10), sized_row(2, 10), sized_row(3, 10)], first_tag=1)
    second = sent(tracker, [sized_row(4, 10), sized_row(5, 70_000), sized_row(6, 10)], first_tag=4)
    tracker.confirmed(CHANNEL, 1, multiple=False, ack=True)
    reason = pika.exceptions.ChannelClosedByBroker(
        406, "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536"
    )
    tracker.channel_closed(CHANNEL, reason)

    # The earlier batch is finished first, as the relay does: its unconfirmed rows are
    # not to blame, though the culprit is not among them.
    first_outcomes = tracker.outcomes(first, by_the_brokers_reply)
    tracker.forget(first)
    second_outcomes = tracker.outcomes(second, by_the_brokers_reply)

    assert first_outcomes[1] == Outcome.confirmed()
    assert [first_outcomes[i].status for i in (2, 3)] == [Status.UNSENT, Status.UNSENT]
    assert second_outcomes[5].status is Status.FAILED
    assert second_outcomes[5].reason is Reason.TOO_LARGE
    assert [second_outcomes[i].status for i in (4, 6)] == [Status.UNSENT, Status.UNSENT]


def test_a_close_after_the_earlier_batch_was_confirmed_cuts_only_the_later_one() -> None:
    tracker = ConfirmTracker()
    first = sent(tracker, [sized_row(1, 10), sized_row(2, 10)], first_tag=1)
    tracker.confirmed(CHANNEL, 2, multiple=True, ack=True)
    tracker.forget(first)
    second = sent(tracker, [sized_row(3, 10), sized_row(4, 10)], first_tag=3)
    tracker.channel_closed(CHANNEL, pika.exceptions.ChannelClosedByBroker(541, "boom"))

    outcomes = tracker.outcomes(second, by_the_brokers_reply)

    assert first.closed is None
    # The reply names no row: both unconfirmed rows are suspects, sent again in smaller
    # batches until the culprit is alone (see outbox_relay.relay.isolation).
    assert [outcomes[i].status for i in (3, 4)] == [Status.UNSENT, Status.UNSENT]
    assert outcomes[3].suspected
    assert outcomes[3].reason is Reason.CHANNEL_CLOSED
    assert outcomes[3].error is not None
    assert "541 boom" in outcomes[3].error


def test_a_close_with_one_unconfirmed_row_blames_it() -> None:
    tracker = ConfirmTracker()
    batch = sent(tracker, [sized_row(1, 10), sized_row(2, 10)], first_tag=1)
    tracker.confirmed(CHANNEL, 1, multiple=False, ack=True)
    tracker.channel_closed(
        CHANNEL, pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - no")
    )

    outcomes = tracker.outcomes(batch, by_the_brokers_reply)

    assert outcomes[1] == Outcome.confirmed()
    assert outcomes[2].status is Status.FAILED
    assert outcomes[2].reason is Reason.CHANNEL_CLOSED
    assert outcomes[2].error is not None
    assert "403 ACCESS_REFUSED - no" in outcomes[2].error


def test_a_channel_closed_for_access_to_an_exchange_fails_the_rows_to_it() -> None:
    tracker = ConfirmTracker()
    audit = dataclasses.replace(sized_row(2, 10), exchange="audit")
    batch = sent(tracker, [sized_row(1, 10), audit, sized_row(3, 10)], first_tag=1)
    text = "ACCESS_REFUSED - access to exchange 'audit' in vhost '/' refused for user 'relay'"
    tracker.channel_closed(CHANNEL, pika.exceptions.ChannelClosedByBroker(403, text))

    outcomes = tracker.outcomes(batch, by_the_brokers_reply)

    assert outcomes[2].status is Status.FAILED
    assert not outcomes[1].suspected
    assert not outcomes[3].suspected, "the culprit is known: the others simply go again"


def test_a_missing_exchange_named_by_the_close_fails_the_rows_to_it() -> None:
    tracker = ConfirmTracker()
    gone = dataclasses.replace(sized_row(2, 10), exchange="gone")
    batch = sent(tracker, [sized_row(1, 10), gone], first_tag=1)
    tracker.channel_closed(
        CHANNEL, pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no exchange 'gone'")
    )

    def missing(error: BaseException, unresolved: Sequence[OutboxRow], _: object) -> Any:
        return culprits(
            error,
            unresolved,
            missing_exchanges=lambda names: {n: "it does not exist" for n in names if n == "gone"},
        )

    outcomes = tracker.outcomes(batch, missing)

    assert outcomes[2] == Outcome.failed("it does not exist", Reason.MISSING_EXCHANGE)
    assert outcomes[1] == Outcome.unsent()


class Relayed:
    """A publisher on a broker in memory, and the row each message it published came from."""

    def __init__(self, broker: FakeBroker, publisher: Publisher) -> None:
        self.broker = broker
        self.publisher = publisher
        self.published: list[tuple[Published, OutboxRow]] = []

    def send(self, rows: Sequence[OutboxRow]) -> Sending:
        start = len(self.broker.published)
        sending = self.publisher.send(rows)
        # What went out is the first rows, in order.
        new = list(zip(self.broker.published[start:], rows, strict=False))
        assert all(m.properties.message_id == row.message_id for m, row in new)
        self.published += new
        return sending

    def ids(self) -> list[int]:
        return [row.id for _, row in self.published]

    def message(self, row: OutboxRow) -> Published:
        """The last message published for ``row``."""
        return [m for m, r in self.published if r is row][-1]


@contextlib.contextmanager
def relaying(**options: Any) -> Iterator[Relayed]:
    """A publisher connected to a broker in memory; ``frame_max`` is the broker's."""
    broker = FakeBroker()
    broker.frame_max = options.pop("frame_max", DEFAULT_FRAME_MAX_BYTES)
    publisher = Publisher(url=URL, connection_factory=broker.connection, **options)
    try:
        publisher.connect()
        yield Relayed(broker, publisher)
    finally:
        broker.silent = False
        publisher.close()
        broker.close()


@pytest.fixture
def relay() -> Iterator[Relayed]:
    with relaying() as relayed:
        yield relayed


@pytest.fixture
def relay_with() -> Iterator[Callable[..., Relayed]]:
    """Make a :class:`Relayed` with the publisher options given."""
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(relaying(**options))


FRAME_TOO_LARGE = "FRAME_ERROR - type 2, all octets = <<>>: {frame_too_large,150012,131064}"


def test_a_connection_closed_over_a_message_blames_it_and_is_no_outage(relay: Relayed) -> None:
    first = relay.send([sized_row(1, 10), sized_row(2, 10)])
    second = relay.send([sized_row(3, 10)])
    relay.broker.ack(2, multiple=True)
    relay.broker.close_connection(pika.exceptions.ConnectionClosedByBroker(501, FRAME_TOO_LARGE))

    # Not taken for an outage: the next use connects again, which forgets the batches
    # out; they were blamed at once.
    relay.send([sized_row(4, 10)])
    assert len(relay.broker.connections) == 2
    assert first.outcomes() == SendResult({1: Outcome.confirmed(), 2: Outcome.confirmed()})
    result = second.outcomes()
    assert result.interrupted is None
    [(row_id, outcome)] = result.outcomes.items()
    assert row_id == 3
    assert outcome.status is Status.FAILED
    assert outcome.reason is Reason.BROKER_REFUSED
    assert outcome.reason.permanent
    assert outcome.error is not None
    assert "501 FRAME_ERROR" in outcome.error
    assert "frame_max" in outcome.error


def test_a_connection_closed_over_one_of_several_messages_makes_them_suspects(
    relay: Relayed,
) -> None:
    sending = relay.send([sized_row(1, 10), sized_row(2, 10), sized_row(3, 10)])
    relay.broker.close_connection(pika.exceptions.ConnectionClosedByBroker(505, "UNEXPECTED_FRAME"))

    result = sending.outcomes()

    assert result.interrupted is None
    assert len(result.outcomes) == 3
    assert all(o.suspected and o.reason is Reason.BROKER_REFUSED for o in result.outcomes.values())


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        (
            pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown"),
            "320 CONNECTION_FORCED - shutdown",
        ),
        (pika.exceptions.ConnectionClosedByBroker(541, "INTERNAL_ERROR"), "541 INTERNAL_ERROR"),
        (pika.exceptions.StreamLostError("Transport indicated EOF"), "Transport indicated EOF"),
    ],
)
def test_a_connection_closed_for_the_brokers_own_reasons_is_an_outage(
    relay: Relayed, reason: BaseException, said: str
) -> None:
    sending = relay.send([sized_row(1, 10)])
    relay.broker.close_connection(reason)

    result = sending.outcomes()
    assert result.outcomes == {}
    assert isinstance(result.interrupted, PublishInterruptedError)
    assert str(result.interrupted) == f"publishing interrupted: {said}"
    with pytest.raises(BrokerUnavailableError, match=said):
        relay.send([sized_row(1, 10)])
    assert len(relay.broker.connections) == 1, "connected again, as after a refusal"


def test_a_hard_error_with_nothing_out_is_an_outage(relay: Relayed) -> None:
    relay.broker.close_connection(pika.exceptions.ConnectionClosedByBroker(501, FRAME_TOO_LARGE))
    with pytest.raises(BrokerUnavailableError, match="501 FRAME_ERROR"):
        relay.send([sized_row(1, 10)])
    assert len(relay.broker.connections) == 1


def test_a_connection_lost_with_a_batch_out_gives_what_was_confirmed_and_why(
    relay: Relayed,
) -> None:
    sending = relay.send([sized_row(1, 10), sized_row(2, 10)])
    relay.broker.ack(1)
    relay.broker.close_connection(pika.exceptions.StreamLostError("Transport indicated EOF"))

    result = sending.outcomes()

    assert result.outcomes == {1: Outcome.confirmed()}
    assert isinstance(result.interrupted, PublishInterruptedError)
    assert "publishing interrupted: Transport indicated EOF" in str(result.interrupted)
    assert not relay.publisher.connected


def test_a_flush_on_a_lost_connection_says_so_without_raising(relay: Relayed) -> None:
    sending = relay.send([sized_row(1, 10)])
    relay.broker.unwritten = 10_000  # the socket had not taken the frames
    relay.broker.close_connection(pika.exceptions.StreamLostError("Transport indicated EOF"))
    assert sending.flush() is False


def test_a_return_left_by_a_closed_channel_is_forgotten_with_its_batch(relay: Relayed) -> None:
    returned = sized_row(1, 10)
    first = relay.send([returned])
    relay.send([sized_row(2, 10)])
    relay.broker.return_(relay.message(returned))
    relay.broker.close_channel(pika.exceptions.ChannelClosedByBroker(541, "boom"))
    [outcome] = first.outcomes().outcomes.values()
    assert outcome.status is Status.UNSENT

    # Sent again (on a new channel), and routed this time, its ack must not find the
    # old return.
    again = relay.send([returned])
    relay.broker.ack(1)
    assert again.outcomes() == SendResult({1: Outcome.confirmed()})


def test_a_message_whose_id_is_out_waits_for_the_next_round_with_the_rows_after_it(
    relay: Relayed,
) -> None:
    # Message ids need not be unique. A return names only the id, so two messages with
    # one id must never be out at once: the second one's return could be taken by the
    # first one's ack (headers exchanges route one routing key two ways).
    x = sized_row(1, 10)
    first = relay.send([x])
    again, other = dataclasses.replace(x, id=3), sized_row(4, 10)
    second = relay.send([sized_row(2, 10), again, other])
    twice = relay.send(
        [sized_row(5, 10), dataclasses.replace(sized_row(6, 10), message_id=x.message_id)]
    )

    assert relay.ids() == [1, 2, 5]
    relay.broker.ack(3, multiple=True)
    assert first.outcomes() == SendResult({1: Outcome.confirmed()})
    assert second.outcomes() == SendResult(
        {2: Outcome.confirmed(), 3: Outcome.unsent(), 4: Outcome.unsent()}
    )
    assert twice.outcomes().outcomes[6] == Outcome.unsent()

    relay.send([again, other])
    assert relay.ids()[3:] == [3, 4]


def test_a_late_return_of_an_abandoned_message_is_not_kept_for_its_resend(relay: Relayed) -> None:
    x = sized_row(1, 10)
    abandoned = relay.send([x])
    relay.send([sized_row(2, 10)])
    abandoned.abandon()

    relay.broker.return_(relay.message(x))  # on its way when the batch was given up
    again = relay.send([x])
    relay.broker.ack(3, multiple=True)

    # Routed this time: the old return must not fail it.
    assert again.outcomes() == SendResult({1: Outcome.confirmed()})


def deliver(
    relay: Relayed, parts: list[list[OutboxRow]], acks: list[int], routed: Callable[[int], bool]
) -> dict[int, Outcome]:
    """Send ``parts`` as batches out at once, then what was left unsent, round after round
    as the relay does; the broker routes the message of delivery tag n if ``routed(n)``
    (else returns it, before its ack) and acks in groups of sizes from ``acks``. Each
    row's final outcome."""
    final: dict[int, Outcome] = {}
    pending = parts
    while any(pending):
        start = len(relay.published)
        batches = [(relay.send(part), part) for part in pending if part]
        sent = relay.published[start:]
        assert len({m.properties.message_id for m, _ in sent}) == len(sent)
        at = 0
        while at < len(sent):
            group = sent[at : at + acks[(start + at) % len(acks)]]
            for message, _ in group:
                if not routed(message.tag):
                    relay.broker.return_(message)
            relay.broker.ack(group[-1][0].tag, multiple=True)
            at += len(group)
        pending = []
        for sending, part in batches:
            outcomes = sending.outcomes().outcomes
            final.update(outcomes)
            pending.append([row for row in part if outcomes[row.id] == Outcome.unsent()])
    return final


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    routed=st.lists(st.booleans(), min_size=60, max_size=60),
    acks=st.lists(st.integers(1, 4), min_size=60, max_size=60),
    split=st.integers(0, 12),
)
def test_every_return_reaches_its_own_row_whatever_the_ids_and_ack_grouping(
    ids: list[int], routed: list[bool], acks: list[int], split: int
) -> None:
    # Rows drawn from a few message ids, sent as two batches out at once and then round
    # after round as the relay does; the broker routes or returns each message and acks
    # in groups of any size, each message's return before its ack. Every row must end
    # with the broker's own decision about it.
    pool = [str(uuid.uuid4()) for _ in range(4)]
    rows = [
        dataclasses.replace(sized_row(i + 1, 10), message_id=pool[n]) for i, n in enumerate(ids)
    ]
    with relaying() as relay:
        final = deliver(relay, [rows[:split], rows[split:]], acks, lambda t: routed[t % 60])
        decided = {row.id: routed[m.tag % 60] for m, row in relay.published}
        for row in rows:
            expected = Outcome.confirmed() if decided[row.id] else Reason.UNROUTABLE
            got = final[row.id]
            assert (got if decided[row.id] else got.reason) == expected, row.id

        # No return outlives its row: sent again and routed, every row is confirmed.
        again = deliver(relay, [rows], acks, lambda _tag: True)
        assert again == {row.id: Outcome.confirmed() for row in rows}


def test_the_confirm_timeout_counts_from_when_the_batch_was_sent(
    relay_with: Callable[..., Relayed],
) -> None:
    # With two batches out, the second one's confirms are waited for only after the
    # first one's: its wait must not start the timeout over.
    relay = relay_with(confirm_timeout_s=0.5)
    sending = relay.send([sized_row(1, 10)])
    time.sleep(0.5)  # sent a confirm timeout ago, and still unconfirmed
    started = time.monotonic()
    result = sending.outcomes()
    assert time.monotonic() - started < 0.4  # not another 0.5 s
    assert result.outcomes == {}
    assert isinstance(result.interrupted, PublishInterruptedError)
    assert "no confirms within 0.5 s" in str(result.interrupted)
    assert not relay.publisher.connected, "a stalled connection is given up"


def test_a_broker_that_keeps_confirming_is_waited_for_past_the_confirm_timeout(
    relay_with: Callable[..., Relayed],
) -> None:
    relay = relay_with(confirm_timeout_s=1)
    sending = relay.send([sized_row(1, 10), sized_row(2, 10)])
    # Slow, not stalled: each confirm comes within the timeout of the one before.
    relay.broker.ioloop.call_later(0.7, lambda: relay.broker.ack(1))
    relay.broker.ioloop.call_later(1.4, lambda: relay.broker.ack(2))
    assert sending.outcomes() == SendResult({1: Outcome.confirmed(), 2: Outcome.confirmed()})


def test_confirms_that_arrived_are_read_before_the_timeout_is_declared(
    relay_with: Callable[..., Relayed],
) -> None:
    relay = relay_with(confirm_timeout_s=0.3)
    sending = relay.send([sized_row(1, 10)])
    time.sleep(0.4)  # its timeout passed while the batch before it was confirmed
    relay.broker.ioloop.call_later(0, lambda: relay.broker.ack(1))  # waiting to be read
    assert sending.outcomes() == SendResult({1: Outcome.confirmed()})


def test_the_confirm_timeout_does_not_count_while_the_broker_blocked_publishers(
    relay_with: Callable[..., Relayed],
) -> None:
    relay = relay_with(confirm_timeout_s=0.5)
    sending = relay.send([sized_row(1, 10)])
    # The broker blocked publishers until now, while the batch before it was waited for.
    relay.broker.current.blocked("low on memory")
    assert relay.publisher.blocked
    time.sleep(1)
    relay.broker.current.unblocked()
    relay.broker.ioloop.call_later(0.3, lambda: relay.broker.ack(1))
    assert sending.outcomes() == SendResult({1: Outcome.confirmed()})


def test_an_exchange_check_the_broker_does_not_answer_is_an_outage_not_a_missing_exchange(
    relay_with: Callable[..., Relayed],
) -> None:
    relay = relay_with(connect_timeout_s=0.1)
    relay.broker.silent = True
    with pytest.raises(BrokerUnavailableError, match="did not answer whether exchange"):
        relay.publisher.missing_exchanges({"orders"})


def test_a_missing_exchange_is_named_with_its_vhost_and_the_fix(relay: Relayed) -> None:
    relay.broker.missing = {"gone"}
    assert relay.publisher.missing_exchanges({"gone", "ex"}) == {
        "gone": "exchange 'gone' does not exist on vhost '/': run `outbox-relay topology "
        "apply` or create it"
    }


def test_a_row_over_the_negotiated_frame_max_is_never_written_and_fails_alone(
    relay_with: Callable[..., Relayed],
) -> None:
    # The broker would close the whole connection (501 FRAME_ERROR) over its properties.
    relay = relay_with(frame_max=8192)
    big = dataclasses.replace(sized_row(2, 10), headers={"h": "x" * 9000})
    sending = relay.send([sized_row(1, 10), big, sized_row(3, 10)])
    assert relay.ids() == [1]
    relay.broker.ack(1)
    outcomes = sending.outcomes().outcomes
    assert outcomes[3] == Outcome.unsent(), "the rows after it go in the next round"
    assert outcomes[2].status is Status.FAILED
    assert outcomes[2].reason is Reason.UNENCODABLE
    assert "frame_max of 8192" in (outcomes[2].error or "")
    assert relay.publisher.refused([big, sized_row(3, 10)]) == {2: outcomes[2]}


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("headers", "sent"),
    [
        # A plain SQL writer's top-level table whose only key marks a typed value is still
        # a table: one header of that name (this crashed the relay, and every restart).
        ({"outbox-double": "1.5"}, {"outbox-double": "1.5"}),
        ({"outbox-timestamp": 1700000000}, {"outbox-timestamp": 1700000000}),
    ],
)
def test_a_top_level_table_is_never_read_as_a_typed_value(
    headers: dict[str, Any], sent: dict[str, Any]
) -> None:
    row = dataclasses.replace(sized_row(1, 10), headers=headers)
    assert checked(row, frame_max=DEFAULT_FRAME_MAX_BYTES) == (None, sent)


@pytest.mark.parametrize("depth", [33, 500, 900, 3000])
def test_headers_nested_past_the_limit_fail_their_row_and_never_raise(depth: int) -> None:
    row = dataclasses.replace(sized_row(1, 10), headers={"a": _nested(depth)})
    outcome = refusal(row, frame_max=DEFAULT_FRAME_MAX_BYTES)
    assert outcome is not None
    assert outcome.status is Status.FAILED
    assert outcome.reason is Reason.UNENCODABLE
    assert "nested too deep" in (outcome.error or "")


def test_the_batch_sent_ahead_cut_off_mid_send_settles_what_the_broker_confirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch past the unconfirmed-bytes bound waits for its first confirms while it is
    sent; when the connection is lost then, in the batch sent ahead of the next, the rows
    the broker confirmed are deleted, not released to be published again."""
    monkeypatch.setattr(core, "MAX_UNCONFIRMED_BYTES", 15)
    rows = [sized_row(1, 1), sized_row(2, 1), sized_row(3, 20), sized_row(4, 1)]

    def answer(channel: FakeChannel, message: Published) -> None:
        connection = channel.connection
        connection.soon(lambda: channel.confirm(message.tag, multiple=False, ack=True))
        if message.properties.message_id == rows[2].message_id:  # then the link drops
            lost = pika.exceptions.StreamLostError("Transport indicated EOF")
            connection.soon(lambda: connection.closed(lost))

    broker = FakeBroker()
    broker.on_publish = answer
    publisher = Publisher(url=URL, connection_factory=broker.connection)
    store = TableStore(rows)
    with leave_relays():
        relay = relay_for(store, publisher, batch_size=2)
        with pytest.raises(PublishInterruptedError):
            relay.run_batches()
    assert [m.properties.message_id for m in broker.published] == [
        r.message_id for r in rows[:3]
    ], "the first batch, then the one sent ahead until the connection dropped"
    assert store.gone == {1, 2, 3}, "every row the broker confirmed is deleted"
    assert 4 not in store.gone


def test_a_channel_the_broker_nacked_on_is_replaced_once_nothing_is_out_on_it(
    relay: Relayed,
) -> None:
    """A channel whose per-queue state went wrong on the broker (seen after a quorum
    queue's leader was lost) nacks every publish: the next batches go on a fresh one."""
    first = relay.send([sized_row(1, 10), sized_row(2, 10)])
    nacking = relay.broker.channel
    ahead = relay.send([sized_row(3, 10)])  # a batch out behind it, on the same channel
    relay.broker.nack(1)
    relay.broker.ack(2)
    outcomes = first.outcomes().outcomes
    assert outcomes[1].status is Status.FAILED
    assert outcomes[1].reason is Reason.NACKED
    assert outcomes[2].status is Status.CONFIRMED
    # Not while a batch is still out on it: closing it would lose that batch's confirms.
    relay.send([sized_row(4, 10)])
    assert relay.broker.channel is nacking
    relay.broker.ack(4, multiple=True)
    assert ahead.outcomes().outcomes[3].status is Status.CONFIRMED
    relay.send([sized_row(5, 10)])
    assert relay.broker.channel is not nacking
    assert not nacking.is_open
    relay.broker.ack(1)  # the fresh channel numbers its messages from 1
    assert relay.publisher.batches_out == 0


def test_a_channel_without_nacks_is_kept(relay: Relayed) -> None:
    first = relay.send([sized_row(1, 10)])
    channel = relay.broker.channel
    relay.broker.ack(1)
    assert first.outcomes().outcomes[1].status is Status.CONFIRMED
    relay.send([sized_row(2, 10)])
    assert relay.broker.channel is channel
