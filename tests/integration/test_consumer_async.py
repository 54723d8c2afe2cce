"""Async handlers against real PostgreSQL and RabbitMQ: the same inbox, retries, parking,
timeouts and drain as sync handlers, beside sync handlers in one app."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.testing import capture_logs

from outbox_relay.consumer import ConsumerApp, Message
from tests.support.broker import BrokerHelper
from tests.support.consumer import (
    effects,
    make_effects_table,
    publish,
    record_effect,
    running_consumer,
    start_subprocess,
    stop_subprocess,
    subprocess_env,
)
from tests.support.relay import wait_for

pytestmark = pytest.mark.integration


def new_app(database_url: str | None, amqp_url: str, schema: str, **kw: Any) -> ConsumerApp:
    return ConsumerApp(
        name=f"async-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
        **kw,
    )


async def record_effect_async(
    tx: psycopg.AsyncConnection[Any], schema: str, message: Message, note: str = ""
) -> None:
    await tx.execute(
        sql.SQL("INSERT INTO {}.effects (message_id, attempt, note) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema)
        ),
        [message.message_id, message.attempt, note],
    )


def outcomes(logs: list[dict[str, Any]]) -> list[str]:
    return [e["outcome"] for e in logs if e.get("event") == "consumer.message"]


def test_an_async_handler_has_its_effect_once_in_the_inbox_transaction(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema, concurrency=2)
    seen: list[tuple[str, bool, int]] = []

    @app.handler(exchange=exchange, queue=broker.name("orders"), bindings=["order.*"])
    async def on_order(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
        await asyncio.sleep(0.01)  # a real await: the loop runs, the transaction stays open
        cursor = await tx.execute(
            sql.SQL("SELECT count(*) FROM {}.inbox WHERE message_id = %s").format(
                sql.Identifier(schema)
            ),
            [message.message_id],
        )
        inbox_rows = await cursor.fetchone()
        assert inbox_rows is not None
        seen.append(
            (str(message.message_id), isinstance(tx, psycopg.AsyncConnection), inbox_rows[0])
        )
        await record_effect_async(tx, schema, message, str(message.body["n"]))

    ids = [str(uuid.uuid4()) for _ in range(5)]
    with capture_logs() as logs, running_consumer(app, broker):
        for i, message_id in enumerate(ids):
            body = json.dumps({"n": i}).encode()
            publish(broker, exchange, "order.created", body, message_id=message_id)
            publish(broker, exchange, "order.created", body, message_id=message_id)
        assert wait_for(lambda: len(outcomes(logs)) >= 10)
        assert broker.depth(broker.name("orders")) == 0

    assert sorted(m for m, _, _ in effects(database_url, schema)) == sorted(ids)
    assert sorted(outcomes(logs)) == ["duplicate"] * 5 + ["handled"] * 5
    # The handler saw its own inbox row: one transaction with the inbox insert.
    assert sorted(seen) == sorted((m, True, 1) for m in ids)


def test_a_failing_async_handler_is_retried_then_parked_with_its_error(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    attempts: list[int] = []
    queue = broker.name("pay")

    @app.handler(exchange=exchange, queue=queue, max_attempts=3, retry_delays=[0.2, 0.4])
    async def on_pay(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
        attempts.append(message.attempt)
        await record_effect_async(tx, schema, message)
        raise ValueError(f"card declined on attempt {message.attempt}")

    with running_consumer(app, broker):
        publish(broker, exchange, "pay.card", b'{"amount": 3}', message_id="pay-1")
        parked = broker.drain(f"{queue}.parking", expect=1, timeout_s=15)

    assert attempts == [1, 2, 3]
    assert effects(database_url, schema) == []  # every attempt rolled back
    headers = parked[0].properties.headers
    assert headers["outbox-attempt"] == 3
    assert headers["outbox-error-type"] == "ValueError"
    assert headers["outbox-error-message"] == "card declined on attempt 3"
    assert "on_pay" in headers["outbox-error-trace"]


def running_statements(database_url: str, application_name: str) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
            [application_name],
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("blocked_in", ["statement", "await"])
def test_an_async_handler_past_its_timeout_is_cancelled_rolled_back_and_retried(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, blocked_in: str
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema, concurrency=1)
    cancelled = threading.Event()
    finished: list[int] = []

    @app.handler(exchange=exchange, queue=broker.name("slow"), timeout=0.5, retry_delays=[0.2])
    async def on_event(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
        await record_effect_async(tx, schema, message)
        if message.attempt == 1:
            try:
                if blocked_in == "statement":
                    await tx.execute("SELECT pg_sleep(30)")
                else:
                    await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        finished.append(message.attempt)

    started = time.monotonic()
    with capture_logs() as logs, running_consumer(app, broker):
        publish(broker, exchange, "k", b"{}", message_id="slow-1")
        assert wait_for(lambda: finished == [2], timeout_s=10)
        # The first attempt's task was cancelled at its await, not left to run 30 s, and
        # its statement is not running on the server any more.
        assert cancelled.wait(5)
        name = f"outbox-relay consumer {app.name}"
        assert not any("pg_sleep" in q for q in running_statements(database_url, name))
    assert time.monotonic() - started < 10
    assert effects(database_url, schema) == [("slow-1", 2, "")]  # the first never committed
    timed_out = [e for e in logs if e.get("error_type") == "HandlerTimeoutError"]
    assert [e["outcome"] for e in timed_out] == ["retried"]


def test_sync_and_async_handlers_live_in_one_app(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema, concurrency=2)
    threads: dict[str, set[str]] = {"sync": set(), "async": set(), "plain-async": set()}

    @app.handler(exchange=exchange, queue=broker.name("sync"), bindings=["sync"])
    def on_sync(message: Message, tx: psycopg.Connection[Any]) -> None:
        threads["sync"].add(threading.current_thread().name)
        record_effect(tx, schema, message.message_id, message.attempt, "sync")

    @app.handler(exchange=exchange, queue=broker.name("async"), bindings=["async"])
    async def on_async(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
        threads["async"].add(threading.current_thread().name)
        await record_effect_async(tx, schema, message, "async")

    @app.handler(exchange=exchange, queue=broker.name("nodb"), bindings=["nodb"])
    async def on_no_tx(message: Message) -> None:  # no tx: nothing of the database
        threads["plain-async"].add(threading.current_thread().name)
        await asyncio.sleep(0)

    ids = {kind: [f"{kind}-{n}" for n in range(6)] for kind in ("sync", "async", "nodb")}
    with capture_logs() as logs, running_consumer(app, broker):
        for n in range(6):
            for kind, kind_ids in ids.items():
                publish(broker, exchange, kind, b"{}", message_id=kind_ids[n])
        assert wait_for(lambda: len(outcomes(logs)) >= 18)

    assert sorted(outcomes(logs)) == ["handled"] * 18
    rows = effects(database_url, schema)
    assert sorted((m, note) for m, _, note in rows) == sorted(
        [(m, "sync") for m in ids["sync"]] + [(m, "async") for m in ids["async"]]
    )
    workers = threads["sync"] | threads["async"] | threads["plain-async"]
    assert all(name.startswith("consumer-worker-") for name in workers)


def test_an_async_handler_without_tx_runs_without_a_database(
    amqp_url: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    app = ConsumerApp(name="nodb-async", amqp_url=amqp_url)
    seen: list[Any] = []

    @app.handler(exchange=exchange, queue=broker.name("q"))
    async def on_message(message: Message) -> None:
        await asyncio.sleep(0)
        seen.append(message.body)

    with running_consumer(app, broker):
        publish(broker, exchange, "k", b'{"n": 1}', message_id=None)  # no id needed either
        assert wait_for(lambda: seen == [{"n": 1}])


@pytest.mark.faults
def test_sigterm_lets_the_running_async_handler_commit_returns_the_rest_and_exits_0(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    env, exchange, queue = subprocess_env(
        database_url, amqp_url, schema, broker, TEST_HANDLER_SLEEP_S="1.0", TEST_ASYNC_HANDLER="1"
    )
    with start_subprocess(env) as proc:  # concurrency 1, prefetch 2
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"consumer.consuming"' in line:
                break
        ids = [f"drain-{n}" for n in range(5)]
        for message_id in ids:
            publish(broker, exchange, "k", b"{}", message_id=message_id)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("started")  # the async handler awaits
        proc.send_signal(signal.SIGTERM)
        drained = next(json.loads(line) for line in proc.stderr if '"consumer.drained"' in line)
        code = stop_subprocess(proc)

    assert code == 0
    handled = [m for m, _, _ in effects(database_url, schema)]
    assert len(handled) == 1  # the one awaiting when SIGTERM came, committed and acked
    assert drained["still_running"] == 0
    rest = broker.drain(queue, expect=4, timeout_s=10)
    assert sorted([*handled, *(r.properties.message_id for r in rest)]) == ids


def test_an_async_session_shares_the_inbox_transaction(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = new_app(database_url, amqp_url, schema)
    insert = text(
        f'INSERT INTO "{schema}".effects (message_id, attempt, note) VALUES (:id, :attempt, :note)'
    )

    @app.handler(exchange=exchange, queue=broker.name("audit"), retry_delays=[0.2])
    async def on_event(message: Message, session: AsyncSession) -> None:
        await session.execute(
            insert, {"id": message.message_id, "attempt": message.attempt, "note": "s"}
        )
        await session.commit()  # a savepoint: the consumer commits after the handler
        if message.body.get("fail") and message.attempt == 1:
            raise RuntimeError("first attempt fails after the session committed")

    with running_consumer(app, broker):
        for n in range(3):
            body = json.dumps({"n": n, "fail": n == 1}).encode()
            publish(broker, exchange, "audit.x", body, message_id=f"e-{n}")
        publish(broker, exchange, "audit.x", b'{"n": 0}', message_id="e-0")  # a duplicate
        assert wait_for(lambda: len(effects(database_url, schema)) >= 3, timeout_s=10)
        time.sleep(0.5)  # room for a wrong fourth effect

    assert sorted((m, a) for m, a, _ in effects(database_url, schema)) == [
        ("e-0", 1),
        ("e-1", 2),
        ("e-2", 1),
    ]
