"""The consumer guide's first examples (docs/consumer.md) run as services on the real
PostgreSQL and RabbitMQ, not through the testing helper: billing
(tests/support/guide_billing.py: a typed handler, and one that publishes in its
transaction) and shipping (tests/support/guide_shipping.py: an async handler), each app
as written, with a relay per schema publishing what the handlers wrote to the outbox.

A private database and a private vhost hold the guide's literal names (the schemas
``billing`` and ``shipping``, the exchanges ``orders``, ``billing`` and ``shipping``), so
nothing else in the suite can meet them. Each order is delivered twice, as the broker
may: every effect and every downstream message happens once."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import psycopg
import pytest

from outbox_relay.consumer.runner import Runner
from outbox_relay.store.schema import migrate
from tests.integration.test_readme import private_vhost
from tests.support import guide_billing, guide_shipping
from tests.support.broker import BrokerHelper
from tests.support.consumer import publish
from tests.support.relay import running_relay, wait_for
from tests.support.schemas import private_database
from tests.support.threads import in_background

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ORDERS = (1, 2, 3)


def rows(database_url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]  # the test's own SQL


def test_the_guide_services_take_each_order_once_on_the_real_broker_and_database(
    database_url: str, amqp_url: str
) -> None:
    mailed_before = len(guide_billing.SENT)
    with private_database(database_url) as db, private_vhost(amqp_url) as mq:
        for schema in ("billing", "shipping"):
            migrate(db, schema=schema)  # the outbox and the inbox
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE billing.invoices (id serial PRIMARY KEY, order_id int, "
                "total_cents int)"
            )
            conn.execute(
                "CREATE TABLE shipping.shipments (id serial PRIMARY KEY, order_id int, "
                "price_cents int)"
            )
        broker = BrokerHelper(mq, prefix="test")
        broker.channel.exchange_declare("shipping", "topic", durable=True)
        broker.track_exchange("shipping")
        booked = broker.queue("booked", bind=("shipping", "shipment.booked"))
        try:
            with contextlib.ExitStack() as services:
                for app in (guide_billing.app, guide_shipping.app):
                    runner = Runner(app, app.settings(database_url=db, amqp_url=mq))
                    services.enter_context(
                        in_background(
                            runner.run,
                            runner.stop,
                            name=app.name,
                            ready=runner.ready,
                            stop_within_s=20,
                        )
                    )
                # The consumers declared the exchanges the relays publish to.
                for schema in ("billing", "shipping"):
                    services.enter_context(running_relay(db, mq, schema))
                for order in ORDERS:
                    total = 0 if order == 3 else 1000 + order  # 0 does not fit OrderPlaced
                    placed = {"order_id": order, "total_cents": total, "email": f"{order}@b.c"}
                    paid = {"order_id": order, "postcode": "75001"}
                    for _copy in range(2):  # the same message twice, as a redelivery
                        body = json.dumps(placed).encode()
                        publish(broker, "orders", "order.placed", body, message_id=f"p{order}")
                        body = json.dumps(paid).encode()
                        publish(broker, "orders", "order.paid", body, message_id=f"s{order}")
                assert wait_for(
                    lambda: (
                        len(guide_billing.SENT) - mailed_before >= 2
                        and broker.depth(booked) >= 3
                        and broker.depth("billing.orders.parking") >= 2
                    ),
                    timeout_s=30,
                )
                time.sleep(1.0)  # room for a second effect, mail or message that should not be
            parked = broker.drain("billing.orders.parking", expect=3, timeout_s=1)
            shipped = broker.drain(booked, expect=4, timeout_s=1)
        finally:
            broker.cleanup()

        invoices = rows(db, "SELECT id, order_id, total_cents FROM billing.invoices ORDER BY 2")
        shipments = rows(db, "SELECT id, order_id, price_cents FROM shipping.shipments ORDER BY 2")
        outboxes = rows(
            db,
            "SELECT (SELECT count(*) FROM billing.outbox), (SELECT count(*) FROM shipping.outbox)",
        )
        inboxes = rows(
            db,
            "SELECT consumer, message_id FROM billing.inbox UNION ALL "
            "SELECT consumer, message_id FROM shipping.inbox ORDER BY 1, 2",
        )

    # The typed handler that publishes: one invoice per valid order, the invalid one parked.
    assert [(order, total) for _, order, total in invoices] == [(1, 1001), (2, 1002)]
    # Each copy of the invalid order is parked at its first attempt; nothing was written.
    assert [(m.properties.message_id, m.properties.headers["outbox-attempt"]) for m in parked] == [
        ("p3", 1),
        ("p3", 1),
    ]
    assert "total_cents" in parked[0].properties.headers["outbox-error-message"]
    # The typed handler without a transaction: one mail per invoice.created published.
    mails = guide_billing.SENT[mailed_before:]
    by_invoice = {invoice_id: order for invoice_id, order, _ in invoices}
    assert sorted(mail["subject"] for mail in mails) == sorted(
        f"Invoice {invoice_id} for order {order}" for invoice_id, order in by_invoice.items()
    )
    assert len({mail["idempotency_key"] for mail in mails}) == 2
    # The async handler: one shipment per order, one shipment.booked message each.
    assert [(order, price) for _, order, price in shipments] == [(1, 499), (2, 499), (3, 499)]
    assert sorted(json.loads(m.body)["order_id"] for m in shipped) == [1, 2, 3]
    assert {json.loads(m.body)["shipment_id"] for m in shipped} == {s[0] for s in shipments}
    # Every event left its outbox. The handlers that take a transaction hold one inbox row
    # per order they handled; mail_invoice, which takes none, holds none.
    assert outboxes == [(0, 0)]
    assert inboxes == [
        ("billing:billing.orders", "p1"),
        ("billing:billing.orders", "p2"),
        ("shipping:shipping.orders", "s1"),
        ("shipping:shipping.orders", "s2"),
        ("shipping:shipping.orders", "s3"),
    ]
