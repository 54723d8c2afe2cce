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
from pathlib import Path

import pytest

from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.faults import (
    RelayProcess,
    Tally,
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
