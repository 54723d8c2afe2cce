"""The consumer's HTTP endpoints and metrics against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from outbox_relay.consumer import ConsumerApp, Message, Reject
from outbox_relay.consumer.serve import endpoints, instrumented_runner
from outbox_relay.tracing import with_trace_context
from tests.support.broker import BrokerHelper
from tests.support.consumer import (
    make_effects_table,
    publish,
    record_effect,
    running_consumer,
    start_subprocess,
    stop_subprocess,
    track,
)
from tests.support.http import free_port, get, samples
from tests.support.relay import wait_for
from tests.support.threads import in_background

pytestmark = pytest.mark.integration


def test_probes_and_metrics_follow_the_consumer(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    queue = broker.name("orders")
    app = ConsumerApp(
        name=f"test-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
    )

    @app.handler(exchange=exchange, queue=queue, max_attempts=2, retry_delays=[0.2])
    def on_order(message: Message, tx: psycopg.Connection[Any]) -> None:
        action = message.body["do"]
        if action == "reject":
            raise Reject("not for us")
        if action == "fail":
            raise ValueError("always fails")
        record_effect(tx, schema, message.message_id, message.attempt)

    track(broker, app)
    port = free_port()
    settings = app.settings(http_port=port, http_host="127.0.0.1")
    runner, registry = instrumented_runner(app, settings)
    with endpoints(runner, registry, settings):
        with in_background(runner.run, runner.stop, name="consumer", ready=runner.ready):
            assert get(port, "/readyz")[0] == 200
            assert get(port, "/healthz")[0] == 200
            labels = f"{{outcome=ok,queue={queue}}}"
            assert samples(port)[f"outbox_relay_consumer_messages_total{labels}"] == 0

            for message_id, action in [("a", "ok"), ("a", "ok"), ("b", "reject"), ("c", "fail")]:
                body = json.dumps({"do": action}).encode()
                publish(broker, exchange, "order.created", body, message_id=message_id)
            publish(broker, exchange, "order.created", b"{}", message_id=None)  # no inbox key

            def count(name: str, **labels: str) -> float:
                key = ",".join(f"{k}={v}" for k, v in sorted({**labels, "queue": queue}.items()))
                return samples(port).get(f"outbox_relay_consumer_{name}{{{key}}}", -1)

            assert wait_for(lambda: count("parked_total") == 3)
            outcomes = {
                outcome: count("messages_total", outcome=outcome)
                for outcome in ("ok", "duplicate", "retried", "parked", "rejected", "undecodable")
            }
            assert outcomes == {
                "ok": 1,
                "duplicate": 1,
                "retried": 1,
                "parked": 1,
                "rejected": 1,
                "undecodable": 1,
            }
            assert count("duplicates_total") == 1
            assert count("retries_total") == 1
            assert count("handler_duration_seconds_count", handler=on_order.__qualname__) == 6
            assert samples(port)["outbox_relay_consumer_in_flight"] == 0
            assert broker.depth(f"{queue}.parking") == 3
        status, body = get(port, "/readyz")
        assert status == 503
        assert "not consuming" in body


def test_consume_serves_the_endpoints_on_http_port(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, tmp_path: Path
) -> None:
    """Also reads both URLs from files, as from container secrets."""
    exchange = broker.exchange()
    queue = broker.name("sub")
    for name in (queue, f"{queue}.parking", f"{queue}.retry.500ms"):
        broker.track_queue(name)
    port = free_port()
    secrets = {"database": database_url, "amqp": amqp_url}
    for name, url in secrets.items():
        (tmp_path / name).write_text(url + "\n", encoding="utf-8")
    env = {
        "OUTBOX_RELAY_DATABASE_URL_FILE": str(tmp_path / "database"),
        "OUTBOX_RELAY_AMQP_URL_FILE": str(tmp_path / "amqp"),
        "OUTBOX_RELAY_SCHEMA": schema,
        "OUTBOX_RELAY_HTTP_PORT": str(port),
        "OUTBOX_RELAY_HTTP_HOST": "127.0.0.1",
        "TEST_QUEUE": queue,
        "TEST_EXCHANGE": exchange,
    }
    make_effects_table(database_url, schema)
    with start_subprocess(env) as proc:
        try:
            assert wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=20)
            assert get(port, "/healthz")[0] == 200
            publish(broker, exchange, "any", b"{}", message_id="m-1")
            key = f"outbox_relay_consumer_messages_total{{outcome=ok,queue={queue}}}"
            assert wait_for(lambda: samples(port).get(key) == 1)
        finally:
            code = stop_subprocess(proc)
    assert code == 0


def test_a_handler_runs_in_the_publishers_trace(amqp_url: str, broker: BrokerHelper) -> None:
    exchange = broker.exchange()
    app = ConsumerApp(name=f"test-{uuid.uuid4().hex[:6]}", amqp_url=amqp_url)
    seen: list[int] = []

    @app.handler(exchange=exchange, queue=broker.name("traced"))
    def on_message(_message: Message) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    tracer = TracerProvider().get_tracer("outbox-relay-tests")
    with tracer.start_as_current_span("place-order") as span:
        headers = dict(with_trace_context({}) or {})
        trace_id = span.get_span_context().trace_id
    with running_consumer(app, broker):
        publish(broker, exchange, "k", b"{}", message_id="traced", headers=headers)
        publish(broker, exchange, "k", b"{}", message_id="untraced")
        assert wait_for(lambda: len(seen) == 2)
    assert seen[0] == trace_id
    assert seen[1] != trace_id
