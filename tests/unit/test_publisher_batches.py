"""The publisher's book-keeping with two batches out, driven by the broker's replies as
pika hands them to its callbacks (no connection is opened)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pika.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika.adapters.select_connection import IOLoop
from pika.spec import Basic, BasicProperties

from outbox_relay.amqp_fields import DEFAULT_FRAME_MAX_BYTES
from outbox_relay.errors import BrokerUnavailableError, PublishInterruptedError
from outbox_relay.message import OutboxRow
from outbox_relay.publisher import Publisher, Sending, checked, refusal
from outbox_relay.publisher_blame import culprits
from outbox_relay.relay.confirms import Batch, ConfirmTracker
from outbox_relay.relay.outcome import Outcome, Reason, Status
from tests.support.rows import sized_row

CHANNEL: Any = object()  # the channel both batches went out on


def out(publisher: Publisher, rows: list[OutboxRow], first_tag: int) -> Batch:
    """A batch as ``send`` leaves it: every row handed to the broker on CHANNEL."""
    batch = publisher._confirms.start(rows, channel=CHANNEL, first_tag=first_tag, deadline=None)
    batch.sent = len(rows)
    batch.ids = {str(row.message_id) for row in rows}
    return batch


def ack(publisher: Publisher, tag: int, *, multiple: bool, channel: Any = CHANNEL) -> None:
    frame: Any = SimpleNamespace(method=Basic.Ack(delivery_tag=tag, multiple=multiple))
    publisher._on_confirm(channel, frame)


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


FRAME_TOO_LARGE = "FRAME_ERROR - type 2, all octets = <<>>: {frame_too_large,150012,131064}"


def close_connection(publisher: Publisher, reason: BaseException) -> None:
    """pika's order when the broker closes the connection: each channel, then it."""
    publisher._on_channel_closed(CHANNEL, reason)
    publisher._on_connection_closed(None, reason)


def test_a_connection_closed_over_a_message_blames_it_and_is_no_outage() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    first = out(publisher, [sized_row(1, 10), sized_row(2, 10)], first_tag=1)
    second = out(publisher, [sized_row(3, 10)], first_tag=3)
    ack(publisher, 2, multiple=True)
    close_connection(publisher, pika.exceptions.ConnectionClosedByBroker(501, FRAME_TOO_LARGE))

    assert publisher._conn_error is None, "taken for an outage"
    assert publisher._refused is not None, "the next use connects again"
    # Blamed at once: connecting again forgets the batches out.
    publisher._confirms.clear()
    assert publisher._finish(first) == {1: Outcome.confirmed(), 2: Outcome.confirmed()}
    [(row_id, outcome)] = publisher._finish(second).items()
    assert row_id == 3
    assert outcome.status is Status.FAILED
    assert outcome.reason is Reason.BROKER_REFUSED
    assert outcome.reason.permanent
    assert outcome.error is not None
    assert "501 FRAME_ERROR" in outcome.error
    assert "frame_max" in outcome.error


def test_a_connection_closed_over_one_of_several_messages_makes_them_suspects() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    batch = out(publisher, [sized_row(1, 10), sized_row(2, 10), sized_row(3, 10)], first_tag=1)
    close_connection(publisher, pika.exceptions.ConnectionClosedByBroker(505, "UNEXPECTED_FRAME"))

    outcomes = publisher._finish(batch)

    assert all(o.suspected and o.reason is Reason.BROKER_REFUSED for o in outcomes.values())


@pytest.mark.parametrize(
    "reason",
    [
        pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown"),
        pika.exceptions.ConnectionClosedByBroker(541, "INTERNAL_ERROR"),
        pika.exceptions.StreamLostError("Transport indicated EOF"),
    ],
)
def test_a_connection_closed_for_the_brokers_own_reasons_is_an_outage(
    reason: BaseException,
) -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    out(publisher, [sized_row(1, 10)], first_tag=1)
    close_connection(publisher, reason)
    assert publisher._conn_error is reason
    assert publisher._refused is None


def test_a_hard_error_with_nothing_out_is_an_outage() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    reason = pika.exceptions.ConnectionClosedByBroker(501, FRAME_TOO_LARGE)
    publisher._on_connection_closed(None, reason)
    assert publisher._conn_error is reason


def test_a_flush_on_a_lost_connection_says_so_without_raising() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    batch = out(publisher, [sized_row(1, 10)], first_tag=1)
    # pika drops a lost connection's transport before it calls the close callbacks,
    # which look at what is left to write.
    publisher._conn = SimpleNamespace(unwritten=lambda: 0)  # type: ignore[assignment]
    assert publisher._unwritten() == 0
    publisher._conn_error = pika.exceptions.StreamLostError("Transport indicated EOF")
    assert Sending(publisher, batch).flush() is False


def test_a_return_left_by_a_closed_channel_is_forgotten_with_its_batch() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    returned = sized_row(1, 10)
    first = out(publisher, [returned], first_tag=1)
    out(publisher, [sized_row(2, 10)], first_tag=2)
    returned_by_broker(publisher, returned)
    publisher._on_channel_closed(CHANNEL, pika.exceptions.ChannelClosedByBroker(541, "boom"))

    publisher._finish(first)
    publisher._forget(first)

    # Sent again, and routed this time, its ack must not find the old return.
    assert not publisher._confirms.returns_pending


class Broker:
    """A channel and a connection as ``Publisher.send`` uses them, recording what it
    publishes: (delivery tag, row) in order."""

    def __init__(self, publisher: Publisher) -> None:
        self.is_open = True
        self.holding = False
        self.published: list[tuple[int, OutboxRow]] = []
        self._publisher = publisher
        self._rows: list[OutboxRow] = []
        self._next = 0
        self.params = SimpleNamespace(frame_max=DEFAULT_FRAME_MAX_BYTES)  # as negotiated
        publisher._channel = self  # type: ignore[assignment]
        publisher._conn = self  # type: ignore[assignment]

    def send(self, rows: list[OutboxRow]) -> Batch:
        self._rows, self._next = rows, 0
        return self._publisher.send(rows)._batch

    def basic_publish(self, *, properties: BasicProperties, **_: object) -> None:
        row = self._rows[self._next]
        assert properties.message_id == str(row.message_id)
        self._next += 1
        self.published.append((len(self.published) + 1, row))

    def release_held(self) -> None:
        self.holding = False


def test_a_message_whose_id_is_out_waits_for_the_next_round_with_the_rows_after_it() -> None:
    # Message ids need not be unique. A return names only the id, so two messages with
    # one id must never be out at once: the second one's return could be taken by the
    # first one's ack (headers exchanges route one routing key two ways).
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    broker = Broker(publisher)
    x = sized_row(1, 10)
    first = broker.send([x])
    again, other = dataclasses.replace(x, id=3), sized_row(4, 10)
    second = broker.send([sized_row(2, 10), again, other])
    twice = broker.send(
        [sized_row(5, 10), dataclasses.replace(sized_row(6, 10), message_id=x.message_id)]
    )

    assert [row.id for _, row in broker.published] == [1, 2, 5]
    ack(publisher, 3, multiple=True, channel=broker)
    assert publisher._finish(second) == {
        2: Outcome.confirmed(),
        3: Outcome.unsent(),
        4: Outcome.unsent(),
    }
    assert publisher._finish(twice)[6] == Outcome.unsent()
    for batch in (first, second, twice):
        publisher._forget(batch)

    broker.send([again, other])
    assert [row.id for _, row in broker.published][3:] == [3, 4]


def test_a_late_return_of_an_abandoned_message_is_not_kept_for_its_resend() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    x = sized_row(1, 10)
    abandoned = out(publisher, [x], first_tag=1)
    out(publisher, [sized_row(2, 10)], first_tag=2)
    Sending(publisher, abandoned).abandon()

    returned_by_broker(publisher, x)  # on its way when the batch was given up
    again = out(publisher, [x], first_tag=3)
    ack(publisher, 3, multiple=True)

    # Routed this time: the old return must not fail it.
    assert publisher._finish(again) == {1: Outcome.confirmed()}


def returned_by_broker(publisher: Publisher, row: OutboxRow) -> None:
    """The broker's Basic.Return of ``row``, as pika hands it over."""
    method = Basic.Return(
        reply_code=312, reply_text="NO_ROUTE", exchange=row.exchange, routing_key=row.routing_key
    )
    # pika's BasicProperties.__init__ carries no annotations
    properties = BasicProperties(message_id=str(row.message_id))  # type: ignore[no-untyped-call]
    publisher._on_return(CHANNEL, method, properties, row.payload)


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
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    broker = Broker(publisher)
    pool = [str(uuid.uuid4()) for _ in range(4)]
    rows = [
        dataclasses.replace(sized_row(i + 1, 10), message_id=pool[n]) for i, n in enumerate(ids)
    ]
    decided: dict[int, bool] = {}  # row id -> routed, as the broker decided
    final: dict[int, Outcome] = {}
    pending = [rows[:split], rows[split:]]
    while any(pending):
        start = len(broker.published)
        batches = [broker.send(part) for part in pending if part]
        sent = broker.published[start:]
        tag = start
        while tag < len(broker.published):
            group = broker.published[tag : tag + acks[tag % len(acks)]]
            for delivery_tag, row in group:
                decided[row.id] = routed[delivery_tag % len(routed)]
                if not decided[row.id]:
                    returned_by_broker(publisher, row)
            ack(publisher, group[-1][0], multiple=True, channel=broker)
            tag += len(group)
        assert len({str(row.message_id) for _, row in sent}) == len(sent)
        pending = []
        for batch in batches:
            outcomes = publisher._finish(batch)
            publisher._forget(batch)
            final.update(outcomes)
            pending.append([row for row in batch.rows if outcomes[row.id] == Outcome.unsent()])

    assert not publisher._confirms.returns_pending
    for row in rows:
        expected = Outcome.confirmed() if decided[row.id] else Reason.UNROUTABLE
        got = final[row.id]
        assert (got if decided[row.id] else got.reason) == expected, row.id


@contextlib.contextmanager
def io_loop(publisher: Publisher) -> Iterator[IOLoop]:
    """The publisher's wait runs this I/O loop (there is no connection)."""
    ioloop = IOLoop()
    publisher._conn = SimpleNamespace(ioloop=ioloop)  # type: ignore[assignment]
    try:
        yield ioloop
    finally:
        ioloop.close()


def test_the_confirm_timeout_counts_from_when_the_batch_was_sent() -> None:
    # With two batches out, the second one's confirms are waited for only after the
    # first one's: its wait must not start the timeout over.
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F", confirm_timeout_s=30)
    batch = out(publisher, [sized_row(1, 10)], first_tag=1)
    batch.sent_at -= 30  # sent a confirm timeout ago, and still unconfirmed
    started = time.monotonic()
    with io_loop(publisher), pytest.raises(PublishInterruptedError, match="within 30 s"):
        Sending(publisher, batch).outcomes()
    assert time.monotonic() - started < 10  # not another 30 s


def test_a_broker_that_keeps_confirming_is_waited_for_past_the_confirm_timeout() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F", confirm_timeout_s=1)
    batch = out(publisher, [sized_row(1, 10), sized_row(2, 10)], first_tag=1)
    with io_loop(publisher) as ioloop:
        # Slow, not stalled: each confirm comes within the timeout of the one before.
        ioloop.call_later(0.7, lambda: ack(publisher, 1, multiple=False))
        ioloop.call_later(1.4, lambda: ack(publisher, 2, multiple=False))
        assert Sending(publisher, batch).outcomes() == {
            1: Outcome.confirmed(),
            2: Outcome.confirmed(),
        }


def test_confirms_that_arrived_are_read_before_the_timeout_is_declared() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F", confirm_timeout_s=30)
    batch = out(publisher, [sized_row(1, 10)], first_tag=1)
    batch.sent_at -= 31  # its timeout passed while the batch before it was confirmed
    with io_loop(publisher) as ioloop:
        ioloop.call_later(0, lambda: ack(publisher, 1, multiple=False))  # waiting to be read
        assert Sending(publisher, batch).outcomes() == {1: Outcome.confirmed()}


def test_the_confirm_timeout_does_not_count_while_the_broker_blocked_publishers() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F", confirm_timeout_s=1)
    batch = out(publisher, [sized_row(1, 10)], first_tag=1)
    batch.sent_at -= 5
    # The broker blocked publishers until now, while the batch before it was waited for.
    publisher._on_unblocked(None, None)
    with io_loop(publisher) as ioloop:
        ioloop.call_later(0.3, lambda: ack(publisher, 1, multiple=False))
        assert Sending(publisher, batch).outcomes() == {1: Outcome.confirmed()}


def test_an_exchange_check_the_broker_does_not_answer_is_an_outage_not_a_missing_exchange() -> None:
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F", connect_timeout_s=0.1)
    with io_loop(publisher):
        publisher._conn.is_open = True  # type: ignore[union-attr]
        publisher._conn.channel = lambda on_open_callback: None  # type: ignore[union-attr]
        with pytest.raises(BrokerUnavailableError, match="did not answer whether exchange"):
            publisher.missing_exchanges({"orders"})


def test_a_row_over_the_negotiated_frame_max_is_never_written_and_fails_alone() -> None:
    # The broker would close the whole connection (501 FRAME_ERROR) over its properties.
    publisher = Publisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    broker = Broker(publisher)
    broker.params.frame_max = 8192
    big = dataclasses.replace(sized_row(2, 10), headers={"h": "x" * 9000})
    batch = broker.send([sized_row(1, 10), big, sized_row(3, 10)])
    assert [row.id for _, row in broker.published] == [1]
    ack(publisher, 1, multiple=False, channel=broker)
    outcomes = publisher._finish(batch)
    assert outcomes[3] == Outcome.unsent(), "the rows after it go in the next round"
    assert outcomes[2].status is Status.FAILED
    assert outcomes[2].reason is Reason.UNENCODABLE
    assert "frame_max of 8192" in (outcomes[2].error or "")
    assert publisher.refused([big, sized_row(3, 10)]) == {2: outcomes[2]}


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
