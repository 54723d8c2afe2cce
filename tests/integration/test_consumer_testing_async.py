"""The testing helper runs async handlers: in the test's transaction (given as a
Connection or an AsyncConnection, from a plain or an async test), or with no database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.testing import Action, run
from outbox_relay.store.trial import trial_connection

pytestmark = pytest.mark.integration


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


def async_app(schema: str) -> tuple[ConsumerApp, Any]:
    app = ConsumerApp(name=f"t-{uuid.uuid4().hex[:6]}", schema=schema)
    effects = sql.SQL("INSERT INTO {}.effects (message_id, note) VALUES (%s, %s)").format(
        sql.Identifier(schema)
    )

    @app.handler(exchange="orders", queue="billing.orders", bindings=["order.placed"])
    async def on_order(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
        await tx.execute(effects, (message.message_id, "billed"))
        await outbox_relay.publish_async(
            tx,
            exchange="billing",
            routing_key="invoice.created",
            payload={"order": message.body["order_id"]},
            schema=schema,
        )
        if message.body.get("fail"):
            raise RuntimeError("after the effect and the publish")

    return app, on_order


def effect_notes(conn: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL("SELECT message_id, note FROM {}.effects ORDER BY 1").format(sql.Identifier(schema))
    ).fetchall()


def test_an_async_handler_runs_in_the_tests_transaction(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    _app, on_order = async_app(schema)
    outcome = run(on_order, {"order_id": 7}, conn=conn, message_id="m-7")
    assert (outcome.action, outcome.duplicate) == (Action.ACK, False), outcome.reason
    [row] = outcome.published
    assert (row.routing_key, row.json()) == ("invoice.created", {"order": 7})
    assert effect_notes(conn, schema) == [("m-7", "billed")]

    again = run(on_order, {"order_id": 7}, conn=conn, message_id="m-7")
    assert (again.action, again.duplicate, again.published) == (Action.ACK, True, ())


def test_a_failing_async_handler_is_rolled_back_to_before_it(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    _app, on_order = async_app(schema)
    outcome = run(on_order, {"order_id": 8, "fail": True}, conn=conn)
    assert (outcome.action, outcome.next_queue, outcome.published) == (
        Action.RETRY,
        "billing.orders.retry.1s",
        (),
    )
    assert "after the effect and the publish" in outcome.reason
    assert effect_notes(conn, schema) == []
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the test's transaction goes on


def test_from_an_async_test_with_an_async_connection(database_url: str, schema: str) -> None:
    _app, on_order = async_app(schema)
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute(
            sql.SQL("CREATE TABLE {}.effects (message_id text PRIMARY KEY, note text)").format(
                sql.Identifier(schema)
            )
        )

    async def an_async_test() -> tuple[Any, Any, list[tuple[Any, ...]]]:
        aconn = await psycopg.AsyncConnection.connect(database_url)
        try:
            handled = run(on_order, {"order_id": 1}, conn=aconn, message_id="a-1")
            failed = run(on_order, {"order_id": 2, "fail": True}, conn=aconn, message_id="a-2")
            cursor = await aconn.execute(
                sql.SQL("SELECT message_id, note FROM {}.effects").format(sql.Identifier(schema))
            )
            rows = await cursor.fetchall()
            await aconn.rollback()
            return handled, failed, rows
        finally:
            await aconn.close()

    handled, failed, rows = asyncio.run(an_async_test())
    assert handled.action is Action.ACK, handled.reason
    assert [r.json() for r in handled.published] == [{"order": 1}]
    assert failed.action is Action.RETRY
    assert rows == [("a-1", "billed")]  # the test's own AsyncConnection sees the work


def test_an_async_handler_without_tx_needs_no_database(schema: str) -> None:
    app = ConsumerApp(name="nodb", schema=schema)
    seen: list[Any] = []

    @app.handler(exchange="e", queue="q")
    async def on_message(message: Message) -> None:
        await asyncio.sleep(0)
        seen.append(message.body)

    assert run(on_message, {"n": 1}).action is Action.ACK
    assert seen == [{"n": 1}]


def test_an_async_session_runs_in_the_tests_transaction(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    app = ConsumerApp(name=f"t-{uuid.uuid4().hex[:6]}", schema=schema)

    @app.handler(exchange="orders", queue="billing.audit")
    async def on_audit(message: Message, session: AsyncSession) -> None:
        await session.execute(
            text(f'INSERT INTO "{schema}".effects (message_id, note) VALUES (:id, :note)'),
            {"id": message.message_id, "note": "audited"},
        )
        await session.commit()  # releases the handler's savepoint only

    outcome = run(on_audit, {}, conn=conn, message_id="s-1")
    assert outcome.action is Action.ACK, outcome.reason
    assert effect_notes(conn, schema) == [("s-1", "audited")]
    inbox = conn.execute(
        sql.SQL("SELECT message_id FROM {}.inbox").format(sql.Identifier(schema))
    ).fetchall()
    assert inbox == [("s-1",)]
