"""Connections that go silent: the network between the relay (or a consumer) and
PostgreSQL or RabbitMQ stops carrying anything, and nothing is closed (no FIN, no RST),
as when a NAT entry expires or a failover address moves. The proxy in front of the
service holds its connections open and forwards nothing on them, ever again; connections
opened once the network is back work. Short deadlines are passed as options, so each test
runs in well under a minute.

Each test proves: nothing lost, duplicates within the at-least-once window, delivery
resumed within the documented bound after the network is back, a warning that names the
connection, and readiness that said "not ready" during the outage.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox_relay.consumer import ConsumerApp, Message
from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.consumer import (
    effects,
    make_effects_table,
    publish,
    record_effect,
    running_consumer,
)
from tests.support.faults import (
    RelayProcess,
    Tally,
    broker_proxy,
    insert_rows,
    pending,
    service_proxy,
)
from tests.support.http import free_port, get
from tests.support.proxy import TcpProxy
from tests.support.relay import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

BATCH = 50
OUT = 2 * BATCH  # the relay has up to two batches out: a cut may send them again
DB_TIMEOUT_S = 3
OUTAGE_S = 6.0
# After the network is back, the relay reconnects within its backoff (at most half the
# outage so far) plus one connection: far less than this.
RECOVERY_BOUND_S = OUTAGE_S / 2 + 10


def relay_args(http_port: int, *extra: str) -> tuple[str, ...]:
    return (
        "--batch-size",
        str(BATCH),
        "--db-timeout",
        str(DB_TIMEOUT_S),
        "--lease-ttl",
        "3",
        "--heartbeat-interval",
        "1",
        "--http-port",
        str(http_port),
        *extra,
    )


def readiness_during(port: int, seconds: float) -> list[int]:
    """/readyz's status codes, sampled every 0.2 s for ``seconds``."""
    codes = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        codes.append(get(port, "/readyz")[0])
        time.sleep(0.2)
    return codes


def silence(
    relay: RelayProcess, proxy: TcpProxy, port: int, *, detect_within_s: float
) -> list[int]:
    """Make the network silent for OUTAGE_S; /readyz turns 503 within ``detect_within_s``
    and stays so until the network is back. Returns the codes sampled meanwhile."""
    proxy.go_silent()
    started = time.monotonic()
    try:
        assert wait_for(lambda: get(port, "/readyz")[0] == 503, timeout_s=detect_within_s), (
            relay.log_text()[-3000:]
        )
        left = OUTAGE_S - (time.monotonic() - started)
        codes = readiness_during(port, max(left, 1.0))
    finally:
        proxy.back_again()
    return codes


def test_relay_database_connections_go_silent(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    port = free_port()
    insert_rows(database_url, schema, exchange, range(500))
    with service_proxy(database_url, 5432) as (proxy, proxied):
        relay = RelayProcess(proxied, amqp_url, schema, *relay_args(port), log_dir=tmp_path)
        try:
            assert wait_for(lambda: pending(database_url, schema) == 0, timeout_s=30)
            assert wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=10)
            # Written while the relay's connections are silent: nothing can claim them.
            insert_rows(database_url, schema, exchange, range(500, 1000))
            codes = silence(relay, proxy, port, detect_within_s=DB_TIMEOUT_S + 3)
            assert pending(database_url, schema) == 500
            back = time.monotonic()
            assert wait_for(
                lambda: pending(database_url, schema) == 0, timeout_s=RECOVERY_BOUND_S
            ), relay.log_text()[-3000:]
            recovered_s = time.monotonic() - back
            assert wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=5)
            # The new LISTEN connection works: a NOTIFY wakes the relay.
            insert_rows(database_url, schema, exchange, range(1000, 1001))
            assert wait_for(lambda: pending(database_url, schema) == 0, timeout_s=5)
        finally:
            code = relay.stop()
        assert code == 0, relay.log_text()[-3000:]
    tally = Tally(expected=set(range(1001)))
    tally.add(broker.collect(queue))
    report_fault(f"relay-database connections silent {OUTAGE_S:g} s", tally)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= OUT
    assert set(codes) == {503}, codes
    assert recovered_s < RECOVERY_BOUND_S
    warnings = relay.events("store.no_answer")
    assert warnings, relay.log_text()[-3000:]
    assert {w["connection"] for w in warnings} <= {"work", "LISTEN"}
    assert all(w["level"] == "warning" and w["db_timeout_s"] == DB_TIMEOUT_S for w in warnings)
    assert relay.events("relay.database_unavailable")
    assert relay.events("relay.recovered")


# The AMQP heartbeat the broker tests negotiate (the URL's `heartbeat` wins over the
# default of 10 s): pika finds a silent connection within 2 x (heartbeat + 5 s).
HEARTBEAT_S = 2
BROKER_DETECTION_S = 2 * (HEARTBEAT_S + 5)
# A connection attempt made while the network was silent waits out pika's handshake
# timeout (15 s) before the next one; then the backoff (at most half the outage).
BROKER_RECOVERY_BOUND_S = 15 + OUTAGE_S / 2 + 10


def test_relay_broker_connection_goes_silent_while_idle(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    """Idle, the relay only exchanges heartbeats with the broker: they find the silence."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    port = free_port()
    insert_rows(database_url, schema, exchange, range(200))
    with broker_proxy(f"{amqp_url}?heartbeat={HEARTBEAT_S}") as (proxy, proxied):
        relay = RelayProcess(database_url, proxied, schema, *relay_args(port), log_dir=tmp_path)
        try:
            assert wait_for(lambda: pending(database_url, schema) == 0, timeout_s=30)
            assert wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=10)
            proxy.go_silent()
            try:
                assert wait_for(
                    lambda: get(port, "/readyz")[0] == 503, timeout_s=BROKER_DETECTION_S + 3
                ), relay.log_text()[-3000:]
                # Written during the outage, once the relay knows of it.
                insert_rows(database_url, schema, exchange, range(200, 400))
                codes = readiness_during(port, OUTAGE_S)
            finally:
                proxy.back_again()
            back = time.monotonic()
            assert wait_for(
                lambda: pending(database_url, schema) == 0, timeout_s=BROKER_RECOVERY_BOUND_S
            ), relay.log_text()[-3000:]
            recovered_s = time.monotonic() - back
        finally:
            code = relay.stop()
        assert code == 0, relay.log_text()[-3000:]
    tally = Tally(expected=set(range(400)))
    tally.add(broker.collect(queue))
    report_fault(f"relay-broker connection silent {OUTAGE_S:g} s (idle)", tally)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= OUT
    assert set(codes) == {503}, codes
    assert recovered_s < BROKER_RECOVERY_BOUND_S
    outages = relay.events("relay.broker_unavailable")
    assert outages
    assert "heartbeats" in outages[0]["error"]
    assert relay.events("relay.recovered")


def consumer_app(
    name: str, schema: str, database_url: str, amqp_url: str, broker: BrokerHelper
) -> tuple[ConsumerApp, str, str]:
    """An app whose handler records one effect per message in its transaction."""
    exchange = broker.exchange()
    queue = broker.name(name)
    app = ConsumerApp(name=name, schema=schema, database_url=database_url, amqp_url=amqp_url)

    @app.handler(exchange=exchange, queue=queue, timeout=5)
    def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
        record_effect(tx, schema, message.message_id, message.attempt)

    return app, exchange, queue


def handled(database_url: str, schema: str) -> list[str]:
    return [m for m, _, _ in effects(database_url, schema)]


def test_consumer_broker_connection_goes_silent(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, report_fault: Report
) -> None:
    make_effects_table(database_url, schema)
    with broker_proxy(f"{amqp_url}?heartbeat={HEARTBEAT_S}") as (proxy, proxied):
        app, exchange, queue = consumer_app("silent-mq", schema, database_url, proxied, broker)
        before = [str(uuid.uuid4()) for _ in range(50)]
        during = [str(uuid.uuid4()) for _ in range(50)]
        with capture_logs() as logs, running_consumer(app, broker) as runner:
            for message_id in before:
                publish(broker, exchange, "k", b"{}", message_id=message_id)
            assert wait_for(lambda: len(handled(database_url, schema)) == 50)
            proxy.go_silent()
            try:
                for message_id in during:  # waiting in the queue for the consumer
                    publish(broker, exchange, "k", b"{}", message_id=message_id)
                assert wait_for(lambda: not runner.readiness()[0], timeout_s=BROKER_DETECTION_S + 3)
                ready = []
                until = time.monotonic() + OUTAGE_S
                while time.monotonic() < until:
                    ready.append(runner.readiness()[0])
                    time.sleep(0.2)
            finally:
                proxy.back_again()
            back = time.monotonic()
            assert wait_for(
                lambda: len(handled(database_url, schema)) >= 100,
                timeout_s=BROKER_RECOVERY_BOUND_S,
            )
            recovered_s = time.monotonic() - back
            assert wait_for(lambda: broker.depth(queue) == 0)
    effects_seen = handled(database_url, schema)
    tally = Tally(expected=set(range(100)))
    ids = before + during
    tally.received = [{"n": ids.index(m)} for m in effects_seen]
    report_fault(f"consumer-broker connection silent {OUTAGE_S:g} s", tally, duplicate_effects=0)
    assert sorted(effects_seen) == sorted(ids)  # every message, each effect once
    assert not any(ready), ready
    assert recovered_s < BROKER_RECOVERY_BOUND_S
    outages = [e for e in logs if e["event"] == "consumer.broker_unavailable"]
    assert outages
    assert outages[0]["log_level"] == "warning"
    assert "heartbeats" in outages[0]["error"]


def test_consumer_database_connection_goes_silent(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, report_fault: Report
) -> None:
    make_effects_table(database_url, schema)
    with service_proxy(database_url, 5432) as (proxy, proxied):
        app, exchange, queue = consumer_app("silent-db", schema, proxied, amqp_url, broker)
        before = [str(uuid.uuid4()) for _ in range(50)]
        during = [str(uuid.uuid4()) for _ in range(50)]
        with (
            capture_logs() as logs,
            running_consumer(app, broker, db_timeout_s=DB_TIMEOUT_S) as runner,
        ):
            for message_id in before:
                publish(broker, exchange, "k", b"{}", message_id=message_id)
            assert wait_for(lambda: len(handled(database_url, schema)) == 50)
            proxy.go_silent()
            try:
                for message_id in during:
                    publish(broker, exchange, "k", b"{}", message_id=message_id)
                assert wait_for(lambda: not runner.readiness()[0], timeout_s=DB_TIMEOUT_S + 3)
                ready = []
                until = time.monotonic() + OUTAGE_S
                while time.monotonic() < until:
                    ready.append(runner.readiness()[0])
                    time.sleep(0.2)
                assert len(handled(database_url, schema)) == 50
            finally:
                proxy.back_again()
            back = time.monotonic()
            assert wait_for(
                lambda: len(handled(database_url, schema)) >= 100, timeout_s=RECOVERY_BOUND_S
            )
            recovered_s = time.monotonic() - back
            assert wait_for(lambda: broker.depth(queue) == 0)
            assert wait_for(lambda: runner.readiness()[0], timeout_s=5)
    effects_seen = handled(database_url, schema)
    ids = before + during
    tally = Tally(expected=set(range(100)))
    tally.received = [{"n": ids.index(m)} for m in effects_seen]
    report_fault(f"consumer-database connection silent {OUTAGE_S:g} s", tally, duplicate_effects=0)
    assert sorted(effects_seen) == sorted(ids)
    assert not any(ready), ready
    assert recovered_s < RECOVERY_BOUND_S
    warnings = [e for e in logs if e["event"] == "store.no_answer"]
    assert warnings
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["connection"] == "handler"
