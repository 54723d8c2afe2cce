"""The consumer guide's SQLAlchemy example (docs/consumer.md): the Session's rows, the
outbox row and the inbox row are one transaction."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import outbox_relay
from outbox_relay.consumer.testing import Action
from tests.support.guide_audit import audit_order

pytestmark = pytest.mark.integration


@pytest.fixture
def audit_db(outbox_test_connection: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn = outbox_test_connection
    conn.execute(outbox_relay.schema_sql(schema="audit"))
    conn.execute(
        "CREATE TABLE audit.entries (id serial PRIMARY KEY, message_id text, routing_key text,"
        " body json)"
    )
    return conn


def test_an_order_event_is_audited_through_the_session(
    run_handler: Any, audit_db: psycopg.Connection[Any]
) -> None:
    outcome = run_handler(
        audit_order, {"order_id": 7}, routing_key="order.placed", message_id="o-7"
    )

    assert outcome.action is Action.ACK, outcome.reason
    assert [row.routing_key for row in outcome.published] == ["entry.recorded"]
    rows = audit_db.execute("SELECT message_id, routing_key, body FROM audit.entries")
    assert rows.fetchall() == [("o-7", "order.placed", {"order_id": 7})]
    inbox = audit_db.execute("SELECT message_id FROM audit.inbox").fetchall()
    assert inbox == [("o-7",)]
