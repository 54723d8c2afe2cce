"""Two batches out at once: the next batch goes to the broker while the confirms of the
one before it are still coming. Nothing lost, nothing invented, each key in order, and a
row that makes the broker close the channel fails alone. (Which row of which batch the
close is blamed on is tested in tests/unit/test_publisher_batches.py: the broker's
timing decides whether the batch before the culprit's is still unconfirmed.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox_relay.message import OutboxRow
from outbox_relay.publisher import Publisher, Sending
from tests.support.broker import BrokerHelper
from tests.support.faults import Tally, insert_raw, insert_rows
from tests.support.private_rabbit import PrivateRabbit
from tests.support.relay import outbox_rows, running_relay, wait_for

pytestmark = pytest.mark.integration

MAX_MESSAGE_SIZE = 64 * 1024  # of the private node that refuses a bigger message


class CountingPublisher(Publisher):
    """Notes the most batches it had out at once: sent, and not all confirmed."""

    most_out = 0

    def send(self, rows: Sequence[OutboxRow], *, deadline: float | None = None) -> Sending:
        sending = super().send(rows, deadline=deadline)
        self.most_out = max(self.most_out, self.batches_out)
        return sending


class Made:
    """The publishers a relay made."""

    def __init__(self) -> None:
        self.publishers: list[CountingPublisher] = []

    def counting(self, **kwargs: Any) -> CountingPublisher:
        publisher = CountingPublisher(**kwargs)
        self.publishers.append(publisher)
        return publisher


def test_a_backlog_goes_out_two_batches_at_a_time_each_key_in_order(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    # Unkeyed rows go out two batches at a time; a batch sharing a key with the batch
    # out waits for it. The keyed rows come in runs that share their keys, and in runs
    # of keys of their own.
    insert_rows(database_url, schema, exchange, range(1000))
    insert_rows(database_url, schema, exchange, range(1000, 1500), keys=5)
    insert_rows(database_url, schema, exchange, range(1500, 2500), keys=700)
    made = Made()
    with running_relay(
        database_url, amqp_url, schema, batch_size=100, publisher_type=made.counting
    ):
        received = broker.drain(queue, expect=2500, timeout_s=60)
        assert wait_for(lambda: outbox_rows(database_url, schema) == [])
        assert [publisher.most_out for publisher in made.publishers] == [2]
    received += broker.drain_all(queue)
    tally = Tally(expected=set(range(2500)))
    tally.add(received)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates == 0
    assert tally.out_of_order_keys() == []


@pytest.mark.rabbitmq_conf(max_message_size=MAX_MESSAGE_SIZE)
def test_a_row_that_closes_the_channel_while_two_batches_are_out_fails_alone(
    database_url: str, schema: str, own_rabbit: PrivateRabbit, own_broker: BrokerHelper
) -> None:
    """On a private node whose max_message_size is lowered in its configuration, so the
    shared broker's limit is never changed under other tests."""
    broker = own_broker
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    limit = MAX_MESSAGE_SIZE
    # Ten full batches before the culprit: the relay has two out at once on the way
    # whatever the machine's load (with one batch ahead of it, a loaded machine could
    # have that one confirmed before the next went out).
    insert_rows(database_url, schema, exchange, range(1000))
    with psycopg.connect(database_url) as conn:
        big_id = insert_raw(
            conn, schema, exchange=exchange, key=None, n=-1, payload=b"x" * (limit + 1)
        )
        conn.commit()
    insert_rows(database_url, schema, exchange, range(1000, 1300))
    made = Made()
    with (
        capture_logs() as logs,
        running_relay(
            database_url, own_rabbit.url, schema, batch_size=100, publisher_type=made.counting
        ),
    ):
        assert wait_for(lambda: len(outbox_rows(database_url, schema)) == 1, timeout_s=60)
        assert [publisher.most_out for publisher in made.publishers] == [2]
    tally = Tally(expected=set(range(1300)))
    tally.add(broker.drain_all(queue))
    # The close loses the confirms of what the channel carried: those rows go again.
    assert not tally.lost
    assert not tally.invented
    [(row_id, error)] = outbox_rows(database_url, schema, "id, last_error")
    assert row_id == big_id
    assert f"{limit + 1} bytes" in error
    blamed = [e["row_id"] for e in logs if e["event"] in ("relay.row_failed", "relay.row_dead")]
    assert blamed == [big_id], "an innocent row was blamed for the close"
