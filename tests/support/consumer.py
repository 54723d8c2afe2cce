"""Running a consumer app in a thread of the test process, or as a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.runner import Runner
from tests.support.broker import BrokerHelper
from tests.support.threads import in_background

ROOT = Path(__file__).resolve().parents[2]


def track(broker: BrokerHelper, app: ConsumerApp) -> None:
    """Delete every queue the app declares (main, delay tiers, parking lot) after the test."""
    for handler in app.handlers:
        route = handler.route
        for name in (route.queue, route.parking, *(tier for tier, _ in route.tiers)):
            if name not in broker.queues:
                broker.track_queue(name)


@contextlib.contextmanager
def running_consumer(app: ConsumerApp, broker: BrokerHelper, **overrides: Any) -> Iterator[Runner]:
    track(broker, app)
    runner = Runner(app, app.settings(**overrides))
    with in_background(
        runner.run, runner.stop, name="consumer", ready=runner.ready, stop_within_s=20
    ):
        yield runner


def publish(
    broker: BrokerHelper,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    message_id: str | None,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
) -> None:
    broker.channel.basic_publish(
        exchange,
        routing_key,
        body,
        properties=pika.BasicProperties(
            message_id=message_id,
            content_type=content_type,
            delivery_mode=2,
            headers=headers,
        ),
    )


def make_effects_table(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.effects (id bigserial PRIMARY KEY, message_id text, "
                "attempt int, note text)"
            ).format(sql.Identifier(schema))
        )


def record_effect(
    tx: psycopg.Connection[Any], schema: str, message_id: str | None, attempt: int, note: str = ""
) -> None:
    tx.execute(
        sql.SQL("INSERT INTO {}.effects (message_id, attempt, note) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema)
        ),
        [message_id, attempt, note],
    )


def effects_app(
    name: str,
    *,
    schema: str,
    database_url: str,
    amqp_url: str,
    broker: BrokerHelper,
    **handler_options: Any,
) -> tuple[ConsumerApp, str, str]:
    """An app named ``name`` whose one handler records each message's effect in its
    transaction, in the effects table made here (see :func:`make_effects_table`), on a
    new exchange of the test's and a queue named after the app: (app, exchange, queue)."""
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    queue = broker.name(name)
    app = ConsumerApp(name=name, schema=schema, database_url=database_url, amqp_url=amqp_url)

    @app.handler(exchange=exchange, queue=queue, **handler_options)
    def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
        record_effect(tx, schema, message.message_id, message.attempt)

    return app, exchange, queue


def effects(database_url: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            sql.SQL("SELECT message_id, attempt, note FROM {}.effects ORDER BY id").format(
                sql.Identifier(schema)
            )
        ).fetchall()


def start_subprocess(
    env: dict[str, str], *, app: str = "tests.support.consumer_app:app"
) -> subprocess.Popen[str]:
    """``outbox-relay consume APP`` (tests/support/consumer_app.py unless told) with JSON
    logs on stderr."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outbox_relay",
            "consume",
            app,
            "--log-format",
            "json",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_subprocess(proc: subprocess.Popen[str], *, timeout_s: float = 20.0) -> int:
    """SIGTERM, wait for the exit code; SIGKILL when it does not stop in time."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()


def subprocess_env(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    *,
    queue_prefix: str = "sub",
    **extra: str,
) -> tuple[dict[str, str], str, str]:
    """Environment for a consumer app of tests/support (``TEST_QUEUE``, ``TEST_EXCHANGE``
    and the services); tracks the queues it declares."""
    exchange = broker.exchange()
    queue = broker.name(queue_prefix)
    for name in (queue, f"{queue}.parking", f"{queue}.retry.500ms"):
        broker.track_queue(name)
    env = {
        "OUTBOX_RELAY_DATABASE_URL": database_url,
        "OUTBOX_RELAY_AMQP_URL": amqp_url,
        "OUTBOX_RELAY_SCHEMA": schema,
        "TEST_QUEUE": queue,
        "TEST_EXCHANGE": exchange,
        **extra,
    }
    return env, exchange, queue
