"""The consumer guide's async example (docs/consumer.md), tested like a sync handler: the
testing helper runs the coroutine in the test's transaction, seen as an AsyncConnection."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import outbox_relay
from outbox_relay.consumer.testing import Action
from tests.support.guide_shipping import ship_order

pytestmark = pytest.mark.integration


@pytest.fixture
def shipping_db(outbox_test_connection: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The shipping schema, created in the test's transaction: gone after the test."""
    conn = outbox_test_connection
    conn.execute(outbox_relay.schema_sql(schema="shipping"))  # the outbox and the inbox
    conn.execute(
        "CREATE TABLE shipping.shipments (id serial PRIMARY KEY, order_id int, price_cents int)"
    )
    return conn


def test_a_paid_order_is_shipped_and_the_shipment_announced(
    run_handler: Any, shipping_db: psycopg.Connection[Any]
) -> None:
    outcome = run_handler(ship_order, {"order_id": 7, "postcode": "75001"})

    assert outcome.action is Action.ACK, outcome.reason
    [event] = outcome.published
    assert (event.routing_key, event.json()) == (
        "shipment.booked",
        {"shipment_id": 1, "order_id": 7},
    )
    rows = shipping_db.execute("SELECT order_id, price_cents FROM shipping.shipments")
    assert rows.fetchall() == [(7, 499)]


def test_an_unreachable_carrier_is_retried_later_with_nothing_written(
    run_handler: Any, shipping_db: psycopg.Connection[Any]
) -> None:
    outcome = run_handler(ship_order, {"order_id": 8, "postcode": "ZZ1"})

    assert outcome.action is Action.RETRY
    assert outcome.reason.endswith("Retry: carrier: carrier API unavailable")
    assert outcome.delay_s == 10
    assert outcome.published == ()
    assert shipping_db.execute("SELECT count(*) FROM shipping.shipments").fetchone() == (0,)
