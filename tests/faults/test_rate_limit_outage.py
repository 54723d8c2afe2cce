"""A database outage while deliveries wait for rate-limit tokens is the same as any
database outage: they go back to the queue, consuming pauses, nothing goes round, and
after the outage every message is handled once, at the limit."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from tests.support.broker import BrokerHelper
from tests.support.consumer import effects, effects_app, publish, running_consumer
from tests.support.faults import service_proxy
from tests.support.relay import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_S = 3.0


def test_deliveries_waiting_for_tokens_go_back_when_the_database_goes_away(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    with service_proxy(database_url, 5432) as (proxy, proxied):
        app, exchange, queue = effects_app(
            "limited",
            schema=schema,
            database_url=proxied,
            amqp_url=amqp_url,
            broker=broker,
            rate_limit="2/s",
        )

        with capture_logs() as logs, running_consumer(app, broker, reconnect_max_s=1.0) as runner:
            for n in range(8):
                publish(broker, exchange, "k", b"{}", message_id=f"m-{n}")
            assert wait_for(lambda: len(effects(database_url, schema)) >= 2)  # the burst

            proxy.accepting = False  # the database is gone while the rest wait for tokens
            proxy.cut()
            assert wait_for(lambda: broker.depth(queue) == 8 - len(effects(database_url, schema)))
            assert not runner.readiness()[0]
            time.sleep(OUTAGE_S)  # a spinning consumer would requeue them again and again
            left = broker.depth(queue)
            assert left == 8 - len(effects(database_url, schema))
            during = list(logs)

            proxy.accepting = True
            assert wait_for(lambda: len(effects(database_url, schema)) == 8, timeout_s=20)

    events = [e["event"] for e in logs]
    assert events.count("consumer.database_unavailable") == 1, "one line per outage"
    requeued = [e for e in during if e.get("outcome") == "requeued"]
    assert len(requeued) <= left, [e.get("message_id") for e in requeued]  # once each, at most
    handled = effects(database_url, schema)
    assert sorted(m for m, _, _ in handled) == sorted(f"m-{n}" for n in range(8))
    assert {attempt for _, attempt, _ in handled} == {1}  # an outage costs no attempt
