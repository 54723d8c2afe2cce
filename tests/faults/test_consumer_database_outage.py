"""A consumer whose database goes away stops taking deliveries instead of requeueing
them round and round, and resumes when the database is back (issue 24)."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from tests.support.broker import BrokerHelper
from tests.support.consumer import effects, effects_app, publish, running_consumer
from tests.support.faults import service_proxy
from tests.support.relay import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_S = 5.0


def test_a_consumer_pauses_while_its_database_is_down_and_resumes_after(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    with service_proxy(database_url, 5432) as (proxy, proxied):
        app, exchange, queue = effects_app(
            "paused", schema=schema, database_url=proxied, amqp_url=amqp_url, broker=broker
        )

        with capture_logs() as logs, running_consumer(app, broker, reconnect_max_s=1.0):
            publish(broker, exchange, "k", b"{}", message_id="before")
            assert wait_for(lambda: len(effects(database_url, schema)) == 1)

            proxy.accepting = False  # the database is gone: new connections refused
            proxy.cut()
            for n in range(3):
                publish(broker, exchange, "k", b"{}", message_id=f"during-{n}")
            assert wait_for(lambda: broker.depth(queue) == 3, timeout_s=15), (
                "the messages wait in the queue, not in the consumer"
            )
            time.sleep(OUTAGE_S)  # a spinning consumer would requeue them every second
            assert broker.depth(queue) == 3
            during = list(logs)

            proxy.accepting = True
            assert wait_for(lambda: len(effects(database_url, schema)) == 4, timeout_s=20)

    events = [e["event"] for e in logs]
    assert events.count("consumer.database_unavailable") == 1, "one line per outage"
    assert events.count("consumer.database_recovered") == 1
    requeued = [e for e in during if e.get("outcome") == "requeued"]
    # At most the deliveries in hand when the outage was seen go back, once each.
    assert len(requeued) <= 3, [e.get("message_id") for e in requeued]
    warnings = [e for e in during if e["log_level"] in ("warning", "error")]
    assert len(warnings) <= 1 + len(requeued), [e["event"] for e in warnings]
    assert sorted(m for m, _, _ in effects(database_url, schema)) == [
        "before",
        "during-0",
        "during-1",
        "during-2",
    ]
