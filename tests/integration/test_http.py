"""The relay's HTTP endpoints: probes answer as specified and metrics move with traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import outbox_relay
from outbox_relay import OutboxMessage
from tests.support.broker import BrokerHelper
from tests.support.http import free_port, get, samples
from tests.support.proxy import TcpProxy
from tests.support.relay import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[TcpProxy]:
    target = urlsplit(amqp_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    yield proxy
    proxy.close()


def test_probes_and_metrics_follow_the_relay(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, proxy: TcpProxy
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "ok.#"))
    target = urlsplit(amqp_url)
    proxied = urlunsplit(
        target._replace(netloc=f"{target.username}:{target.password}@127.0.0.1:{proxy.port}")
    )
    port = free_port()
    env = {**os.environ, "OUTBOX_RELAY_HTTP_PORT": str(port), "OUTBOX_RELAY_SCHEMA": schema}
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outbox_relay",
            "run",
            "--database-url",
            database_url,
            "--amqp-url",
            proxied,
            "--log-format",
            "json",
            "--max-attempts",
            "1",
            "--heartbeat-interval",
            "0.3",
            "--lease-ttl",
            "3",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=15)
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/nope")[0] == 404
        before = samples(port)
        assert before["outbox_relay_published_total"] == 0
        assert wait_for(lambda: samples(port)["outbox_relay_partitions_owned"] == 16)

        with psycopg.connect(database_url) as conn:
            outbox_relay.publish_many(
                conn,
                [
                    OutboxMessage(exchange=exchange, routing_key="ok.1", payload={"n": n})
                    for n in range(25)
                ],
                schema=schema,
            )
            outbox_relay.publish(
                conn, exchange=exchange, routing_key="unbound", payload={}, schema=schema
            )
            conn.commit()
        assert len(broker.drain(queue, expect=25)) == 25
        assert wait_for(lambda: samples(port).get("outbox_relay_dead_total") == 1)
        after = samples(port)
        assert after["outbox_relay_published_total"] == 25
        assert after["outbox_relay_failed_total{reason=unroutable}"] == 1
        assert after["outbox_relay_commit_to_confirm_seconds_count"] == 25
        assert after["outbox_relay_dead_rows"] == 1
        assert after["outbox_relay_backlog_rows"] == 0
        assert after["outbox_relay_unowned_partitions"] == 0

        proxy.accepting = False
        proxy.cut()
        assert wait_for(lambda: get(port, "/readyz")[0] == 503, timeout_s=15)
        _, body = get(port, "/readyz")
        assert "broker" in body
        assert get(port, "/healthz")[0] == 200, "an outage is not a reason to restart the relay"
        proxy.accepting = True
        assert wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=30)
        assert samples(port)["outbox_relay_outages_total{service=broker}"] == 1
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(15)
        except subprocess.TimeoutExpired:
            relay.kill()
    assert relay.returncode == 0
