"""The consumer guide's test with a database (docs/consumer.md): the handler runs in the
test's transaction, which is rolled back afterwards; the outbox rows it wrote are checked.

The plugin is enabled in the root conftest.py (``pytest_plugins =
["outbox_relay.consumer.testing"]``); ``outbox_test_connection`` connects to
``OUTBOX_RELAY_TEST_DATABASE_URL``."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import outbox_relay
from outbox_relay.consumer.testing import Action
from tests.support.guide_billing import bill_order

pytestmark = pytest.mark.integration


@pytest.fixture
def billing_db(outbox_test_connection: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The billing schema, created in the test's transaction: gone after the test."""
    conn = outbox_test_connection
    conn.execute(outbox_relay.schema_sql(schema="billing"))  # the outbox and the inbox
    conn.execute(
        "CREATE TABLE billing.invoices (id serial PRIMARY KEY, order_id int, total_cents int)"
    )
    return conn


def test_an_order_is_invoiced_and_the_invoice_announced(
    run_handler: Any, billing_db: psycopg.Connection[Any]
) -> None:
    outcome = run_handler(bill_order, {"order_id": 7, "total_cents": 1250, "email": "a@b.c"})

    assert outcome.action is Action.ACK
    [event] = outcome.published
    assert event.routing_key == "invoice.created"
    assert event.json() == {"invoice_id": 1, "order_id": 7, "email": "a@b.c"}
    invoices = billing_db.execute("SELECT order_id, total_cents FROM billing.invoices")
    assert invoices.fetchall() == [(7, 1250)]


def test_an_order_without_a_total_is_parked_with_nothing_written(
    run_handler: Any, billing_db: psycopg.Connection[Any]
) -> None:
    outcome = run_handler(bill_order, {"order_id": 8, "total_cents": 0, "email": "a@b.c"})

    assert outcome.action is Action.PARK
    assert "total_cents" in outcome.reason
    assert outcome.published == ()
    assert billing_db.execute("SELECT count(*) FROM billing.invoices").fetchone() == (0,)


def test_the_same_message_twice_is_invoiced_once(
    run_handler: Any, billing_db: psycopg.Connection[Any]
) -> None:
    order = {"order_id": 9, "total_cents": 500, "email": "a@b.c"}
    first = run_handler(bill_order, order, message_id="order-9")
    again = run_handler(bill_order, order, message_id="order-9")

    assert (first.duplicate, again.duplicate) == (False, True)
    assert billing_db.execute("SELECT count(*) FROM billing.invoices").fetchone() == (1,)
