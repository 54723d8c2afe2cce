"""The consumer guide's flow-control example (docs/consumer.md): which failures of a
handler retry and which park at once, and the pools and prefetch the app runs with."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import outbox_relay
from outbox_relay.consumer.pools import SHARED, pool_sizes, prefetch_for
from outbox_relay.consumer.testing import Action
from tests.support import guide_flow
from tests.support.guide_flow import app, print_label, reserve_stock

pytestmark = pytest.mark.integration


@pytest.fixture
def fulfilment_db(outbox_test_connection: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The fulfilment schema, created in the test's transaction: gone after the test."""
    conn = outbox_test_connection
    conn.execute(outbox_relay.schema_sql(schema="fulfilment"))
    conn.execute("CREATE TABLE fulfilment.labels (order_id int, label text)")
    conn.execute("CREATE TABLE fulfilment.reservations (order_id int)")
    return conn


def labels(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT order_id, label FROM fulfilment.labels").fetchall()


def test_a_label_is_printed(run_handler: Any, fulfilment_db: psycopg.Connection[Any]) -> None:
    outcome = run_handler(print_label, {"order_id": 1, "postcode": "75001"})

    assert outcome.action is Action.ACK, outcome.reason
    assert labels(fulfilment_db) == [(1, "LABEL-75001")]


def test_a_carrier_failure_is_retried(
    run_handler: Any, fulfilment_db: psycopg.Connection[Any]
) -> None:
    outcome = run_handler(print_label, {"order_id": 2, "postcode": "ZZ9"})

    assert outcome.action is Action.RETRY
    assert outcome.reason.endswith("CarrierError: carrier API answered 503")
    assert labels(fulfilment_db) == []


def test_a_rejected_address_is_parked_at_once(
    run_handler: Any, fulfilment_db: psycopg.Connection[Any]
) -> None:
    outcome = run_handler(print_label, {"order_id": 3, "postcode": "XX1"})

    assert outcome.action is Action.PARK
    assert outcome.next_queue == "fulfilment.labels.parking"
    assert "AddressRejectedError is in the handler's park_on" in outcome.reason
    assert labels(fulfilment_db) == []


def test_an_error_outside_retry_on_is_parked_at_once(
    run_handler: Any, fulfilment_db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(postcode: str) -> str:
        raise TypeError("label() got an unexpected keyword argument")

    monkeypatch.setattr(guide_flow.carrier, "label", broken)  # a bug in the handler's code
    outcome = run_handler(print_label, {"order_id": 4, "postcode": "75001"})

    assert outcome.action is Action.PARK
    assert "TypeError is not in the handler's retry_on" in outcome.reason


def test_each_pool_and_prefetch_is_as_documented() -> None:
    settings = app.settings(database_url="postgresql://unused")
    assert pool_sizes(app.handlers, settings) == {SHARED: 4, "print_label": 2}
    assert prefetch_for(print_label, settings) == 4  # 2 x prefetch_multiplier 2
    assert prefetch_for(reserve_stock, settings) == 8  # the app's 4 x 2
