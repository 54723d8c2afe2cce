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
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.consumer import effects, effects_app, publish, running_consumer
from tests.support.faults import RelayProcess, Tally, broker_proxy, service_proxy
from tests.support.http import free_port, get
from tests.support.proxy import TcpProxy
from tests.support.relay import wait_for
from tests.support.scene import Scene, stops_cleanly

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


@dataclass(frozen=True)
class Bounds:
    """How soon a silent connection must be found (readiness false), and how soon
    delivery must resume once the network is back."""

    detect_within_s: float
    resume_within_s: float


DATABASE = Bounds(DB_TIMEOUT_S + 3, RECOVERY_BOUND_S)
BROKER = Bounds(BROKER_DETECTION_S + 3, BROKER_RECOVERY_BOUND_S)


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
    scene: Scene,
    proxy: TcpProxy,
    bounds: Bounds,
    *,
    total: int,
    write_once_detected: bool = False,
    fault: str,
    report_fault: Report,
    **proxied: str,
) -> RelayProcess:
    """A relay (to the ``proxied`` URL) publishes the first half of ``total`` rows, then
    the network goes silent while the second half is written (see
    :func:`silent_network`), and once it is back all of it goes out within the bounds;
    the relay then stops cleanly. Nothing is lost, duplicates stay within the two
    batches out, readiness said "not ready" throughout. Returns the (stopped) relay."""
    exchange, queue = scene.route()
    port = free_port()
    scene.insert(exchange, range(total // 2))
    relay = scene.relay(*relay_args(port), **proxied)
    with stops_cleanly(relay):
        assert wait_for(lambda: scene.pending() == 0, timeout_s=30)
        assert wait_for(relay_ready(port), timeout_s=10)
        outage = silent_network(
            proxy,
            relay_ready(port),
            write=lambda: scene.insert(exchange, range(total // 2, total)),
            write_once_detected=write_once_detected,
            detect_within_s=bounds.detect_within_s,
        )
        assert scene.pending() > 0, "nothing waited for the outage"
        resumed(
            outage,
            lambda: scene.pending() == 0,
            bound_s=bounds.resume_within_s,
            why=relay.log_text()[-3000:],
        )
        assert wait_for(relay_ready(port), timeout_s=5)
    tally = scene.tally(queue, range(total))
    report_fault(fault, tally)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= OUT
    assert not any(outage.ready), outage.ready
    assert outage.recovered_s < bounds.resume_within_s
    assert relay.events("relay.recovered")
    return relay


def test_relay_database_connections_go_silent(scene: Scene, report_fault: Report) -> None:
    with service_proxy(scene.database_url, 5432) as (proxy, proxied):
        relay = relay_through_silence(
            scene,
            proxy,
            DATABASE,
            database_url=proxied,
            # The second half, written as the silence begins: nothing can claim it.
            total=1000,
            fault=f"relay-database connections silent {OUTAGE_S:g} s",
            report_fault=report_fault,
        )
    warnings = relay.events("store.no_answer")
    assert warnings, relay.log_text()[-3000:]
    assert {w["connection"] for w in warnings} <= {"work", "LISTEN"}
    assert all(w["level"] == "warning" and w["db_timeout_s"] == DB_TIMEOUT_S for w in warnings)
    assert relay.events("relay.database_unavailable")


def test_relay_broker_connection_goes_silent_while_idle(scene: Scene, report_fault: Report) -> None:
    """Idle, the relay only exchanges heartbeats with the broker: they find the silence."""
    with broker_proxy(f"{scene.amqp_url}?heartbeat={HEARTBEAT_S}") as (proxy, proxied):
        relay = relay_through_silence(
            scene,
            proxy,
            BROKER,
            amqp_url=proxied,
            total=400,
            # Once the heartbeats found the silence: a batch sent into it would be found
            # by its lease instead.
            write_once_detected=True,
            fault=f"relay-broker connection silent {OUTAGE_S:g} s (idle)",
            report_fault=report_fault,
        )
    outages = relay.events("relay.broker_unavailable")
    assert outages
    assert "heartbeats" in outages[0]["error"]


def publish_all(broker: BrokerHelper, exchange: str, message_ids: list[str]) -> None:
    for message_id in message_ids:
        publish(broker, exchange, "k", b"{}", message_id=message_id)


def consumer_through_silence(
    scene: Scene,
    name: str,
    proxy: TcpProxy,
    bounds: Bounds,
    *,
    fault: str,
    report_fault: Report,
    database_url: str | None = None,
    amqp_url: str | None = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """A consumer app ``name``, to the URLs given (a proxy's) or the scene's, handles 50
    messages; the network goes silent while 50 more wait in the queue, then is back:
    each message's effect happened once, readiness said "not ready" during the outage,
    delivery resumed within the bounds. Returns the logs."""
    database_url_direct, schema, broker = scene.database_url, scene.schema, scene.broker
    app, exchange, queue = effects_app(
        name,
        schema=schema,
        database_url=database_url or database_url_direct,
        amqp_url=amqp_url or scene.amqp_url,
        broker=broker,
        timeout=5,
    )

    def handled() -> list[str]:
        return [m for m, _, _ in effects(database_url_direct, schema)]

    before = [str(uuid.uuid4()) for _ in range(50)]
    during = [str(uuid.uuid4()) for _ in range(50)]
    with capture_logs() as logs, running_consumer(app, broker, **overrides) as runner:
        publish_all(broker, exchange, before)
        assert wait_for(lambda: len(handled()) == 50)
        outage = silent_network(
            proxy,
            lambda: runner.readiness()[0],
            write=lambda: publish_all(broker, exchange, during),
            detect_within_s=bounds.detect_within_s,
        )
        resumed(outage, lambda: len(handled()) >= 100, bound_s=bounds.resume_within_s)
        assert wait_for(lambda: broker.depth(queue) == 0)
        assert wait_for(lambda: runner.readiness()[0], timeout_s=5)
    effects_seen = handled()
    ids = before + during
    tally = Tally(expected=set(range(100)))
    tally.received = [{"n": ids.index(m)} for m in effects_seen]
    report_fault(fault, tally, duplicate_effects=len(effects_seen) - len(set(effects_seen)))
    assert sorted(effects_seen) == sorted(ids)  # every message, each effect once
    assert not any(outage.ready), outage.ready
    assert outage.recovered_s < bounds.resume_within_s
    return logs


def test_consumer_broker_connection_goes_silent(scene: Scene, report_fault: Report) -> None:
    with broker_proxy(f"{scene.amqp_url}?heartbeat={HEARTBEAT_S}") as (proxy, proxied):
        logs = consumer_through_silence(
            scene,
            "silent-mq",
            proxy,
            BROKER,
            amqp_url=proxied,
            fault=f"consumer-broker connection silent {OUTAGE_S:g} s",
            report_fault=report_fault,
        )
    outages = [e for e in logs if e["event"] == "consumer.broker_unavailable"]
    assert outages
    assert outages[0]["log_level"] == "warning"
    assert "heartbeats" in outages[0]["error"]


def test_consumer_database_connection_goes_silent(scene: Scene, report_fault: Report) -> None:
    with service_proxy(scene.database_url, 5432) as (proxy, proxied):
        logs = consumer_through_silence(
            scene,
            "silent-db",
            proxy,
            DATABASE,
            database_url=proxied,
            fault=f"consumer-database connection silent {OUTAGE_S:g} s",
            report_fault=report_fault,
            db_timeout_s=DB_TIMEOUT_S,
        )
    warnings = [e for e in logs if e["event"] == "store.no_answer"]
    assert warnings
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["connection"] == "handler"
