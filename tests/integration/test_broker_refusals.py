"""The broker closing the connection because of what the relay sent is not an outage: the
row that caused it fails alone, with what the broker said, and every other row goes out."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox_relay.relay.isolation import ISOLATION_MAX_ROWS
from tests.support.broker import BrokerHelper
from tests.support.faults import Tally, insert_raw
from tests.support.relay import outbox_rows, running_relay, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# 60 KB of JSON, about 150 KB once AMQP-encoded: over the frame_max pika negotiates
# (128 KiB), so the broker answers 501 FRAME_ERROR and closes the connection. A relay
# that checks the header table's size before sending fails the row without sending it;
# either way the row is dead with a reason and nothing else is held back.
OVER_FRAME_MAX = json.dumps({"h": [0] * 30000})


def test_a_row_the_broker_closes_the_connection_over_fails_alone(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "ok.#"))
    expected: set[int] = set()
    with psycopg.connect(database_url) as conn:
        for n in range(50):
            insert_raw(conn, schema, exchange=exchange, key=f"k{n % 10}", n=n)
        bad_id = insert_raw(
            conn, schema, exchange=exchange, key="bad", n=-1, headers=OVER_FRAME_MAX
        )
        # A later row of the bad row's key: it waits for the bad row, then goes.
        insert_raw(conn, schema, exchange=exchange, key="bad", n=50)
        for n in range(51, 101):
            insert_raw(conn, schema, exchange=exchange, key=f"k{n % 10}", n=n)
        conn.commit()
    expected = set(range(101))

    with capture_logs() as logs, running_relay(database_url, amqp_url, schema):
        received = broker.drain(queue, expect=101, timeout_s=60)
        assert wait_for(
            lambda: (
                outbox_rows(database_url, schema, "id, dead_at IS NOT NULL") == [(bad_id, True)]
            ),
            timeout_s=30,
        ), outbox_rows(database_url, schema, "id, attempts, dead_at, last_error")
        received += broker.drain_all(queue)

    tally = Tally(expected=expected)
    tally.add(received)
    assert not tally.lost
    assert not tally.invented, "the bad row was published"
    assert tally.out_of_order_keys() == []
    # Rows the broker took but never confirmed go again (at-least-once): those out with
    # the bad row the first time, then fewer than two small sends' worth.
    assert tally.duplicates < len(expected) + 2 * ISOLATION_MAX_ROWS, tally.duplicates
    [(error, attempts)] = outbox_rows(database_url, schema, "last_error, attempts")
    assert "frame" in error.lower(), error
    assert attempts == 1, "dead at its first attempt: no retry can help"
    events = [entry["event"] for entry in logs]
    assert "relay.broker_unavailable" not in events, "a row was taken for an outage"
    # Finding one row among a hundred unconfirmed ones takes a few connections, not one
    # per row, and never a reconnect loop.
    assert events.count("publisher.connected") <= 12, [
        e for e in logs if e["event"] == "publisher.channel_closed"
    ]
    dead: list[dict[str, Any]] = [e for e in logs if e["event"] == "relay.row_dead"]
    assert [e["row_id"] for e in dead] == [bad_id]
