"""A batch's byte budget: payloads stop at --batch-bytes, the rest of the claim stays
locked, keyed order and delivery are unchanged, and a relay woken for large rows takes
them all."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql

import outbox_relay
from outbox_relay.relay import NullObserver
from outbox_relay.store.relay_store import PostgresStore
from tests.support.broker import BrokerHelper
from tests.support.relay import outbox_rows, running_relay, wait_for


def write_sized(
    database_url: str, schema: str, exchange: str, sizes: Sequence[int], *, keys: int = 3
) -> None:
    """One row per size, with a payload of exactly that many bytes; keys k0..k{keys-1}
    in turn."""
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish_many(
            conn,
            [
                outbox_relay.OutboxMessage(
                    exchange=exchange,
                    routing_key="k",
                    payload=f"{seq:06d}".encode().ljust(size, b"x"),
                    content_type="application/octet-stream",
                    partition_key=f"k{seq % keys}",
                )
                for seq, size in enumerate(sizes)
            ],
            schema=schema,
        )
        conn.commit()


@pytest.fixture
def store(database_url: str, schema: str) -> Iterator[PostgresStore]:
    store = PostgresStore(url=database_url, schema=schema, relay_id="budget", lease_ttl_s=8.0)
    store.connect()
    store.heartbeat()
    try:
        yield store
    finally:
        store.close()


def locked_by_others(database_url: str, schema: str) -> list[int]:
    """Ids of outbox rows another session cannot lock right now."""
    with psycopg.connect(database_url) as conn:
        query = sql.SQL("SELECT id FROM {}.outbox ORDER BY id FOR UPDATE SKIP LOCKED")
        free = {row[0] for row in conn.execute(query.format(sql.Identifier(schema)))}
        conn.rollback()
    return [row_id for (row_id,) in outbox_rows(database_url, schema) if row_id not in free]


def test_a_claim_stops_at_its_byte_budget_and_keeps_the_rest_locked(
    database_url: str, schema: str, broker: BrokerHelper, store: PostgresStore
) -> None:
    write_sized(database_url, schema, broker.exchange(), [3000, 3000, 3000, 100])
    ids = [row_id for (row_id,) in outbox_rows(database_url, schema)]

    claim = store.claim(10, 7000)

    assert [row.id for row in claim.rows] == ids[:2]  # a third would make 9000 bytes
    assert [len(row.payload) for row in claim.rows] == [3000, 3000]
    # The small row after the budget is left over too: a batch is a prefix in id order.
    assert claim.left_over == 2
    assert locked_by_others(database_url, schema) == ids
    claim.settle([row.id for row in claim.rows], [])
    assert [row_id for (row_id,) in outbox_rows(database_url, schema)] == ids[2:]
    assert locked_by_others(database_url, schema) == []


def test_a_batch_may_fill_its_budget_exactly(
    database_url: str, schema: str, broker: BrokerHelper, store: PostgresStore
) -> None:
    write_sized(database_url, schema, broker.exchange(), [3000, 3000, 1])

    claim = store.claim(10, 6000)

    assert [len(row.payload) for row in claim.rows] == [3000, 3000]
    assert claim.left_over == 1
    claim.release()


def test_a_row_larger_than_the_budget_goes_alone_and_the_next_claim_takes_the_rest(
    database_url: str, schema: str, broker: BrokerHelper, store: PostgresStore
) -> None:
    write_sized(database_url, schema, broker.exchange(), [50_000, 10, 10])

    claim = store.claim(10, 1000)
    assert [len(row.payload) for row in claim.rows] == [50_000]
    assert claim.left_over == 2
    claim.settle([row.id for row in claim.rows], [])

    following = store.claim(10, 1000)
    assert [len(row.payload) for row in following.rows] == [10, 10]
    assert following.left_over == 0
    following.release()


class BatchBytes(NullObserver):
    """Records the payload bytes of the rows of every settled batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def batch_settled(self, **event: Any) -> None:
        self.batches.append([len(row.payload) for row in event["published"]])


def test_the_relay_keeps_each_batch_within_its_budget_and_each_key_in_order(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    sizes = [(97 * seq) % 20_000 + 1 for seq in range(300)]
    write_sized(database_url, schema, exchange, sizes, keys=7)
    budget = 40_000
    observed = BatchBytes()

    with running_relay(
        database_url, amqp_url, schema, batch_size=1000, batch_bytes=budget, observer=observed
    ):
        received = broker.drain(queue, expect=300, timeout_s=60)
        assert wait_for(lambda: not outbox_rows(database_url, schema))
        received += broker.drain_all(queue, quiet_s=0.5)

    seqs = [int(message.body[:6]) for message in received]
    assert sorted(seqs) == list(range(300))  # each once: nothing lost, nothing twice
    for key in range(7):
        of_key = [seq for seq in seqs if seq % 7 == key]
        assert of_key == sorted(of_key)
    assert all(sum(batch) <= budget or len(batch) == 1 for batch in observed.batches)
    assert max(len(batch) for batch in observed.batches) > 1


def test_a_waiting_relay_woken_for_rows_over_its_budget_publishes_them_all_at_once(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """Each claim takes one row and leaves the rest locked; the relay must claim again
    rather than go back to sleep (until its next heartbeat, every 2 s, or its backstop
    poll, 30 s here): six rows take a few milliseconds, not ten seconds."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    waiting = sql.SQL("SELECT count(*) FROM {}.outbox_listener WHERE waiting")

    def relay_waits() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(waiting.format(sql.Identifier(schema))).fetchone()
        return row is not None and row[0] > 0

    with running_relay(database_url, amqp_url, schema, batch_bytes=20_000, poll_interval_s=30.0):
        assert wait_for(relay_waits)
        write_sized(database_url, schema, exchange, [20_000] * 6, keys=1)
        received = broker.drain(queue, expect=6, timeout_s=5)
    assert [int(message.body[:6]) for message in received] == [0, 1, 2, 3, 4, 5]
