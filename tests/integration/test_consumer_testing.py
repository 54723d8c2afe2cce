"""The testing helper against the real PostgreSQL: the handler's transaction, its inbox row,
what it published to the outbox, and what a test's rollback or commit leaves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.orm import Session

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.testing import Action, run
from outbox_relay.store.trial import trial_connection

pytestmark = pytest.mark.integration


class OrderPlaced(pydantic.BaseModel):
    order_id: int


@pytest.fixture
def conn(database_url: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute(
            sql.SQL("CREATE TABLE {}.effects (message_id text PRIMARY KEY, note text)").format(
                sql.Identifier(schema)
            )
        )
    with trial_connection(database_url) as trial:
        yield trial


def app_with_handlers(schema: str) -> tuple[ConsumerApp, Any, Any]:
    app = ConsumerApp(name=f"t-{uuid.uuid4().hex[:6]}", schema=schema)
    effects = sql.SQL("INSERT INTO {}.effects (message_id, note) VALUES (%s, %s)").format(
        sql.Identifier(schema)
    )

    @app.handler(exchange="orders", queue="billing.orders", bindings=["order.placed"])
    def on_order(message: Message, tx: psycopg.Connection[Any]) -> None:
        tx.execute(effects, (message.message_id, "billed"))
        outbox_relay.publish(
            tx,
            exchange="billing",
            routing_key="invoice.created",
            payload={"order": message.body["order_id"]},
            partition_key=str(message.body["order_id"]),
            schema=schema,
        )
        if message.body.get("fail"):
            raise RuntimeError("after the effect and the publish")

    @app.handler(exchange="orders", queue="billing.audit")
    def on_audit(message: Message, session: Session) -> None:
        session.execute(
            text(f'INSERT INTO "{schema}".effects (message_id, note) VALUES (:id, :note)'),
            {"id": message.message_id, "note": "audited"},
        )
        session.commit()  # releases the handler's savepoint; the runner commits

    return app, on_order, on_audit


def notes(database_url: str, schema: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as other:
        return other.execute(  # type: ignore[return-value]
            sql.SQL("SELECT message_id, note FROM {}.effects ORDER BY 1").format(
                sql.Identifier(schema)
            )
        ).fetchall()


def test_the_outbox_rows_a_handler_writes_are_reported_and_stay_uncommitted(
    conn: psycopg.Connection[Any], database_url: str, schema: str
) -> None:
    _app, on_order, _ = app_with_handlers(schema)
    outcome = run(on_order, {"order_id": 7}, conn=conn, message_id="m-7")
    assert (outcome.action, outcome.duplicate, outcome.committed) == (Action.ACK, False, False)
    [row] = outcome.published
    assert (row.exchange, row.routing_key, row.json(), row.partition_key) == (
        "billing",
        "invoice.created",
        {"order": 7},
        "7",
    )
    seen = conn.execute(
        sql.SQL("SELECT note FROM {}.effects").format(sql.Identifier(schema))
    ).fetchall()
    assert seen == [("billed",)]  # the test sees the work in its transaction
    assert notes(database_url, schema) == []  # nobody else does: nothing committed


def test_a_failed_handler_is_rolled_back_to_before_it_but_the_tests_setup_stays(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    _app, on_order, _ = app_with_handlers(schema)
    conn.execute(
        sql.SQL("INSERT INTO {}.effects VALUES ('setup', 'by the test')").format(
            sql.Identifier(schema)
        )
    )
    outcome = run(on_order, {"order_id": 8, "fail": True}, conn=conn)
    assert (outcome.action, outcome.next_queue, outcome.published) == (
        Action.RETRY,
        "billing.orders.retry.1s",
        (),
    )
    assert "after the effect and the publish" in outcome.reason
    left = conn.execute(
        sql.SQL("SELECT message_id FROM {}.effects").format(sql.Identifier(schema))
    ).fetchall()
    assert left == [("setup",)]
    outbox = conn.execute(sql.SQL("SELECT count(*) FROM {}.outbox").format(sql.Identifier(schema)))
    assert outbox.fetchone() == (0,)


def test_a_committed_run_is_a_duplicate_the_second_time(
    conn: psycopg.Connection[Any], database_url: str, schema: str
) -> None:
    _app, on_order, _ = app_with_handlers(schema)
    first = run(on_order, {"order_id": 9}, conn=conn, message_id="m-9", commit=True)
    assert (first.action, first.committed) == (Action.ACK, True)
    assert notes(database_url, schema) == [("m-9", "billed")]
    again = run(on_order, {"order_id": 9}, conn=conn, message_id="m-9")
    assert (again.action, again.duplicate, again.published) == (Action.ACK, True, ())
    assert again.reason.startswith("duplicate:")
    assert notes(database_url, schema) == [("m-9", "billed")]


def test_an_invalid_payload_parks_before_any_effect(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    app, _, _ = app_with_handlers(schema)

    @app.handler(exchange="orders", queue="billing.typed")
    def on_typed(order: OrderPlaced, tx: psycopg.Connection[Any]) -> None:
        raise AssertionError("never called")

    outcome = run(on_typed, {"order_id": "x"}, conn=conn)
    assert outcome.action is Action.PARK
    assert "order_id" in outcome.reason


def test_a_sqlalchemy_session_works_in_the_handlers_own_transaction(
    conn: psycopg.Connection[Any], database_url: str, schema: str
) -> None:
    _app, _, on_audit = app_with_handlers(schema)
    outcome = run(on_audit, {}, conn=conn, message_id="a-1")
    assert outcome.action is Action.ACK, outcome.reason
    assert notes(database_url, schema) == []  # session.commit() did not commit
    inbox = conn.execute(
        sql.SQL("SELECT consumer, message_id FROM {}.inbox").format(sql.Identifier(schema))
    ).fetchall()
    assert inbox == [(on_audit.inbox_key, "a-1")]  # the same transaction as the session's work
    conn.commit()
    assert notes(database_url, schema) == [("a-1", "audited")]
