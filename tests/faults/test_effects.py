"""Relay SIGKILLs upstream of a consumer with an inbox: every message takes effect once.

The relay is killed at random points while a consumer handles what it publishes; the
handler's effect is a row in an effects table written through ``tx``. Redelivered and
republished messages must be skipped by the inbox, so effects per message stay at one.
"""

from __future__ import annotations

import random
import time

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.runner import Runner
from outbox_relay.observability.consumer_metrics import ConsumerMetrics
from tests.faults.conftest import Report
from tests.support.consumer import track
from tests.support.faults import Tally
from tests.support.relay import wait_for
from tests.support.scene import FAST_FAILOVER_ARGS, Scene, stops_cleanly
from tests.support.threads import in_background

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

TOTAL = 10_000
KILLS = 6
BATCH = 200


def test_relay_kills_upstream_of_an_inbox_consumer_give_one_effect_each(
    scene: Scene, report_fault: Report
) -> None:
    database_url, schema, broker = scene.database_url, scene.schema, scene.broker
    exchange = broker.exchange()
    effects = sql.Identifier(schema, "effects")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (n integer NOT NULL)").format(effects))

    app = ConsumerApp(
        name="effects", schema=schema, database_url=database_url, amqp_url=scene.amqp_url
    )

    @app.handler(
        exchange=exchange, queue=broker.name("effects"), bindings=["#"], declare_exchange=False
    )
    def record(message: Message, tx: psycopg.Connection[tuple[object, ...]]) -> None:
        tx.execute(sql.SQL("INSERT INTO {} (n) VALUES (%s)").format(effects), [message.body["n"]])

    track(broker, app)
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, handlers=[(h.queue, h.name) for h in app.handlers])
    runner = Runner(app, app.settings(concurrency=4), observer=metrics)
    scene.insert(exchange, range(TOTAL), keys=50)
    args = ("--batch-size", str(BATCH), *FAST_FAILOVER_ARGS)

    def applied() -> list[int]:
        with psycopg.connect(database_url) as conn:
            return [r[0] for r in conn.execute(sql.SQL("SELECT n FROM {}").format(effects))]

    with in_background(
        runner.run, runner.stop, name="consumer", ready=runner.ready, stop_within_s=20
    ):
        killed_mid_work = scene.relays_killed(*args, kills=KILLS, rng=random.Random(), within_s=0.2)
        relay = scene.relay(*args)
        with stops_cleanly(relay):
            assert wait_for(lambda: scene.pending() == 0, timeout_s=60)
            assert wait_for(lambda: len(set(applied())) == TOTAL, timeout_s=60)
            time.sleep(1.0)  # redeliveries still in flight get their chance to misbehave

    numbers = applied()
    duplicates_skipped = registry.get_sample_value(
        "outbox_relay_consumer_duplicates_total", {"queue": app.handlers[0].queue}
    )
    tally = Tally(expected=set(range(TOTAL)))
    tally.received.extend({"n": n} for n in numbers)
    report_fault(
        "relay SIGKILL upstream of an inbox consumer",
        tally,
        runs=KILLS,
        duplicate_effects=len(numbers) - len(set(numbers)),
        duplicates_delivered=int(duplicates_skipped or 0),
    )
    assert killed_mid_work >= KILLS - 1, "the kills did not hit a working relay"
    assert not tally.lost
    assert len(numbers) == len(set(numbers)), "a message took effect twice"
