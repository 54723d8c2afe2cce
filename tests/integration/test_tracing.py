"""Trace context travels from publish() in the message headers (OpenTelemetry)."""

from __future__ import annotations

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import outbox_relay
from outbox_relay import OutboxMessage
from outbox_relay.tracing import trace_context_from
from tests.support.relay import outbox_rows

pytestmark = pytest.mark.integration

tracer = TracerProvider().get_tracer("outbox-relay-tests")


def test_publish_records_the_current_span_and_a_consumer_can_continue_it(
    database_url: str, schema: str
) -> None:
    with psycopg.connect(database_url) as conn:
        with tracer.start_as_current_span("place-order") as span:
            outbox_relay.publish(
                conn, exchange="orders", routing_key="a", payload={}, schema=schema
            )
            outbox_relay.publish_many(
                conn, [OutboxMessage(exchange="orders", routing_key="b", payload={})], schema=schema
            )
            trace_id = span.get_span_context().trace_id
        outbox_relay.publish(conn, exchange="orders", routing_key="c", payload={}, schema=schema)
        conn.commit()
    first, second, untraced = [row[0] for row in outbox_rows(database_url, schema, "headers")]
    assert first["traceparent"].split("-")[1] == f"{trace_id:032x}"
    assert second["traceparent"] == first["traceparent"]
    assert "traceparent" not in untraced

    with trace_context_from(first):
        assert trace.get_current_span().get_span_context().trace_id == trace_id
    assert trace.get_current_span().get_span_context().trace_id != trace_id


def test_a_traceparent_the_caller_sets_is_kept(database_url: str, schema: str) -> None:
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with psycopg.connect(database_url) as conn, tracer.start_as_current_span("x"):
        outbox_relay.publish(
            conn,
            exchange="orders",
            routing_key="a",
            payload={},
            headers={"traceparent": given},
            schema=schema,
        )
        conn.commit()
    [(headers,)] = outbox_rows(database_url, schema, "headers")
    assert headers["traceparent"] == given
