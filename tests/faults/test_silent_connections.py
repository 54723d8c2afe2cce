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
from collections.abc import Callable
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


# The AMQP heartbeat the broker tests negotiate (the URL's `heartbeat` wins over the
# default of 10 s): pika finds a silent connection within 2 x (heartbeat + 5 s).
HEARTBEAT_S = 2
BROKER_DETECTION_S = 2 * (HEARTBEAT_S + 5)
# A connection attempt made while the network was silent waits out pika's handshake
# timeout (15 s) before the next one; then the backoff (at most half the outage).
BROKER_RECOVERY_BOUND_S = 15 + OUTAGE_S / 2 + 10


class Outage:
    """What a test saw of one silent spell: readiness sampled after detection, and how
    long delivery took to resume once the network was back."""

    def __init__(self) -> None:
        self.ready: list[bool] = []
        self.recovered_s = float("inf")


def silent_network(
    proxy: TcpProxy,
    ready: Callable[[], bool],
    *,
    write: Callable[[], None],
    detect_within_s: float,
    write_once_detected: bool = False,
) -> Outage:
    """The network goes silent and ``write`` writes what must wait for the outage (at
    once, or ``write_once_detected``); readiness must turn false within
    ``detect_within_s``, and it is sampled until OUTAGE_S is over; then the network is
    back, and the outage's ``recovered_s`` counts from there (see :func:`resumed`)."""
    outage = Outage()
    proxy.go_silent()
    started = time.monotonic()
    try:
        if not write_once_detected:
            write()
        assert wait_for(lambda: not ready(), timeout_s=detect_within_s), "readiness lied"
        if write_once_detected:
            write()
        while time.monotonic() - started < OUTAGE_S or not outage.ready:
            outage.ready.append(ready())
            time.sleep(0.2)
    finally:
        proxy.back_again()
    outage.recovered_s = time.monotonic()
    return outage


def resumed(outage: Outage, done: Callable[[], bool], *, bound_s: float, why: str = "") -> None:
    """Delivery resumes within ``bound_s`` of the network coming back."""
    back = outage.recovered_s
    assert wait_for(done, timeout_s=bound_s), why
    outage.recovered_s = time.monotonic() - back


def relay_ready(port: int) -> Callable[[], bool]:
    return lambda: get(port, "/readyz")[0] == 200


def relay_through_silence(
    relay: RelayProcess,
    proxy: TcpProxy,
    port: int,
    *,
    database_url: str,
    schema: str,
    write: Callable[[], None],
    write_once_detected: bool = False,
    detect_within_s: float,
    bound_s: float,
) -> Outage:
    """The relay drains what is there, then the network goes silent while ``write``
    writes more (see :func:`silent_network`), and once it is back all of it goes out
    within ``bound_s``; the relay then stops cleanly."""
    try:
        assert wait_for(lambda: pending(database_url, schema) == 0, timeout_s=30)
        assert wait_for(relay_ready(port), timeout_s=10)
        outage = silent_network(
            proxy,
            relay_ready(port),
            write=write,
            write_once_detected=write_once_detected,
            detect_within_s=detect_within_s,
        )
        assert pending(database_url, schema) > 0, "nothing waited for the outage"
        resumed(
            outage,
            lambda: pending(database_url, schema) == 0,
            bound_s=bound_s,
            why=relay.log_text()[-3000:],
        )
        assert wait_for(relay_ready(port), timeout_s=5)
    finally:
        code = relay.stop()
    assert code == 0, relay.log_text()[-3000:]
    return outage


def check_relay_run(
    relay: RelayProcess,
    broker: BrokerHelper,
    queue: str,
    outage: Outage,
    *,
    total: int,
    bound_s: float,
    fault: str,
    report_fault: Report,
) -> None:
    tally = Tally(expected=set(range(total)))
    tally.add(broker.collect(queue))
    report_fault(fault, tally)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= OUT
    assert not any(outage.ready), outage.ready
    assert outage.recovered_s < bound_s
    assert relay.events("relay.recovered")


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
        outage = relay_through_silence(
            relay,
            proxy,
            port,
            database_url=database_url,
            schema=schema,
            # Written while the relay's connections are silent: nothing can claim them.
            write=lambda: insert_rows(database_url, schema, exchange, range(500, 1000)),
            detect_within_s=DB_TIMEOUT_S + 3,
            bound_s=RECOVERY_BOUND_S,
        )
    check_relay_run(
        relay,
        broker,
        queue,
        outage,
        total=1000,
        bound_s=RECOVERY_BOUND_S,
        fault=f"relay-database connections silent {OUTAGE_S:g} s",
        report_fault=report_fault,
    )
    warnings = relay.events("store.no_answer")
    assert warnings, relay.log_text()[-3000:]
    assert {w["connection"] for w in warnings} <= {"work", "LISTEN"}
    assert all(w["level"] == "warning" and w["db_timeout_s"] == DB_TIMEOUT_S for w in warnings)
    assert relay.events("relay.database_unavailable")


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
        outage = relay_through_silence(
            relay,
            proxy,
            port,
            database_url=database_url,
            schema=schema,
            # Once the heartbeats found the silence: a batch sent into it would be found
            # by its lease instead.
            write=lambda: insert_rows(database_url, schema, exchange, range(200, 400)),
            write_once_detected=True,
            detect_within_s=BROKER_DETECTION_S + 3,
            bound_s=BROKER_RECOVERY_BOUND_S,
        )
    check_relay_run(
        relay,
        broker,
        queue,
        outage,
        total=400,
        bound_s=BROKER_RECOVERY_BOUND_S,
        fault=f"relay-broker connection silent {OUTAGE_S:g} s (idle)",
        report_fault=report_fault,
    )
    outages = relay.events("relay.broker_unavailable")
    assert outages
    assert "heartbeats" in outages[0]["error"]


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


def publish_all(broker: BrokerHelper, exchange: str, message_ids: list[str]) -> None:
    for message_id in message_ids:
        publish(broker, exchange, "k", b"{}", message_id=message_id)


def handled(database_url: str, schema: str) -> list[str]:
    return [m for m, _, _ in effects(database_url, schema)]


def consumer_through_silence(
    app: ConsumerApp,
    exchange: str,
    queue: str,
    proxy: TcpProxy,
    *,
    database_url: str,
    schema: str,
    broker: BrokerHelper,
    detect_within_s: float,
    bound_s: float,
    fault: str,
    report_fault: Report,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """50 messages handled, the network silent while 50 more wait in the queue, then
    back: each message's effect happened once, readiness said "not ready" during the
    outage, delivery resumed within ``bound_s``. Returns the logs."""
    before = [str(uuid.uuid4()) for _ in range(50)]
    during = [str(uuid.uuid4()) for _ in range(50)]
    with capture_logs() as logs, running_consumer(app, broker, **overrides) as runner:
        publish_all(broker, exchange, before)
        assert wait_for(lambda: len(handled(database_url, schema)) == 50)
        outage = silent_network(
            proxy,
            lambda: runner.readiness()[0],
            write=lambda: publish_all(broker, exchange, during),
            detect_within_s=detect_within_s,
        )
        resumed(outage, lambda: len(handled(database_url, schema)) >= 100, bound_s=bound_s)
        assert wait_for(lambda: broker.depth(queue) == 0)
        assert wait_for(lambda: runner.readiness()[0], timeout_s=5)
    effects_seen = handled(database_url, schema)
    ids = before + during
    tally = Tally(expected=set(range(100)))
    tally.received = [{"n": ids.index(m)} for m in effects_seen]
    report_fault(fault, tally, duplicate_effects=len(effects_seen) - len(set(effects_seen)))
    assert sorted(effects_seen) == sorted(ids)  # every message, each effect once
    assert not any(outage.ready), outage.ready
    assert outage.recovered_s < bound_s
    return logs


def test_consumer_broker_connection_goes_silent(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, report_fault: Report
) -> None:
    make_effects_table(database_url, schema)
    with broker_proxy(f"{amqp_url}?heartbeat={HEARTBEAT_S}") as (proxy, proxied):
        app, exchange, queue = consumer_app("silent-mq", schema, database_url, proxied, broker)
        logs = consumer_through_silence(
            app,
            exchange,
            queue,
            proxy,
            database_url=database_url,
            schema=schema,
            broker=broker,
            detect_within_s=BROKER_DETECTION_S + 3,
            bound_s=BROKER_RECOVERY_BOUND_S,
            fault=f"consumer-broker connection silent {OUTAGE_S:g} s",
            report_fault=report_fault,
        )
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
        logs = consumer_through_silence(
            app,
            exchange,
            queue,
            proxy,
            database_url=database_url,
            schema=schema,
            broker=broker,
            detect_within_s=DB_TIMEOUT_S + 3,
            bound_s=RECOVERY_BOUND_S,
            fault=f"consumer-database connection silent {OUTAGE_S:g} s",
            report_fault=report_fault,
            db_timeout_s=DB_TIMEOUT_S,
        )
    warnings = [e for e in logs if e["event"] == "store.no_answer"]
    assert warnings
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["connection"] == "handler"
