"""The consumer under faults: killed between commit and ack, SIGTERM, a cut connection,
a handler longer than the heartbeat timeout. Nothing is lost, no effect happens twice."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

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
from tests.support.proxy import TcpProxy
from tests.support.relay import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def wait_for_event(proc: subprocess.Popen[str], event: str) -> dict[str, Any]:
    """Read the subprocess's JSON log lines until ``event``; fails if it exits first."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{"):
            entry: dict[str, Any] = json.loads(line)
            if entry.get("event") == event:
                return entry
    raise AssertionError(f"the consumer exited (code {proc.wait()}) before logging {event}")


@pytest.mark.parametrize(
    ("kind", "note"), [("def", "started"), ("async def", "started async")], ids=["sync", "async"]
)
def test_a_consumer_killed_between_commit_and_ack_skips_the_redelivery(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, kind: str, note: str
) -> None:
    make_effects_table(database_url, schema)
    env, exchange, queue = subprocess_env(
        database_url,
        amqp_url,
        schema,
        broker,
        TEST_KILL_AFTER_COMMIT="1",
        TEST_ASYNC_HANDLER="1" if kind == "async def" else "0",
    )
    with start_subprocess(env) as doomed:
        try:
            wait_for_event(doomed, "consumer.consuming")
            publish(broker, exchange, "order.paid", b'{"n": 1}', message_id="kill-1")
            code = doomed.wait(20)
        finally:
            if doomed.poll() is None:
                doomed.kill()
    assert code == -signal.SIGKILL
    assert effects(database_url, schema) == [("kill-1", 1, note)]  # committed, not acked

    env["TEST_KILL_AFTER_COMMIT"] = "0"
    with start_subprocess(env) as survivor:
        try:
            entry = wait_for_event(survivor, "consumer.message")
        finally:
            code = stop_subprocess(survivor)
    assert entry["outcome"] == "duplicate"
    assert entry["message_id"] == "kill-1"
    assert code == 0
    assert effects(database_url, schema) == [("kill-1", 1, note)]
    assert broker.depth(queue) == 0


def test_sigterm_finishes_the_running_handler_returns_the_rest_and_exits_0(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    env, exchange, queue = subprocess_env(
        database_url, amqp_url, schema, broker, TEST_HANDLER_SLEEP_S="1.0"
    )
    with start_subprocess(env) as proc:  # concurrency 1, prefetch 2
        wait_for_event(proc, "consumer.consuming")
        ids = [f"drain-{n}" for n in range(5)]
        for message_id in ids:
            publish(broker, exchange, "k", b"{}", message_id=message_id)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("started")
        proc.send_signal(signal.SIGTERM)
        drained = wait_for_event(proc, "consumer.drained")
        code = stop_subprocess(proc)

    assert code == 0
    handled = [m for m, _, _ in effects(database_url, schema)]
    assert len(handled) == 1  # the one running when SIGTERM came, committed and acked
    assert drained["still_running"] == 0
    rest = broker.drain(queue, expect=4, timeout_s=10)
    assert sorted([*handled, *(r.properties.message_id for r in rest)]) == ids


def test_a_connection_cut_mid_stream_loses_nothing_and_repeats_no_effect(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    proxied = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
    )
    app = ConsumerApp(name="cut", schema=schema, database_url=database_url, amqp_url=proxied)

    @app.handler(exchange=exchange, queue=broker.name("cut"))
    def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
        record_effect(tx, schema, message.message_id, message.attempt)
        time.sleep(0.002)

    ids = [str(uuid.uuid4()) for _ in range(300)]
    try:
        with running_consumer(app, broker) as runner:
            for message_id in ids:
                publish(broker, exchange, "k", b"{}", message_id=message_id)
            assert wait_for(lambda: len(effects(database_url, schema)) >= 50)
            proxy.cut()
            assert wait_for(lambda: len(effects(database_url, schema)) >= 300, timeout_s=30)
            assert wait_for(lambda: broker.depth(broker.name("cut")) == 0)
            assert runner.connections_opened >= 2
    finally:
        proxy.close()
    handled = [m for m, _, _ in effects(database_url, schema)]
    assert sorted(handled) == sorted(ids)


def test_a_handler_longer_than_two_heartbeats_keeps_its_connection(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    app = ConsumerApp(
        name="hb", schema=schema, database_url=database_url, amqp_url=f"{amqp_url}?heartbeat=1"
    )

    @app.handler(exchange=exchange, queue=broker.name("hb"), timeout=30)
    def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
        time.sleep(3.0)  # three heartbeat intervals
        record_effect(tx, schema, message.message_id, message.attempt)

    with running_consumer(app, broker) as runner:
        publish(broker, exchange, "k", b"{}", message_id="hb-1")
        assert wait_for(lambda: len(effects(database_url, schema)) == 1, timeout_s=15)
        assert wait_for(lambda: broker.depth(broker.name("hb")) == 0)
        time.sleep(1.0)  # a redelivery would show now
        assert runner.connections_opened == 1
    assert effects(database_url, schema) == [("hb-1", 1, "")]
