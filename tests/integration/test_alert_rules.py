"""The alert rules fire on what real outages look like (issue 24).

A relay runs against the real services behind TCP proxies; its /metrics are recorded
once per tick while the broker, then the database, go away and come back, and while
the relay is gone. `promtool test rules` then runs deploy/prometheus/alerts.yml on the
recording (one tick per minute) and checks which alerts fire in each phase.

OUTBOX_RELAY_RECORD_ALERT_SERIES=PATH also writes the promtool test there (this is how
tests/prometheus/alerts_test.yml, which `make alerts-test` runs, was recorded).
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry

import outbox_relay
from outbox_relay.observability.relay_metrics import BacklogCollector, RelayMetrics
from outbox_relay.store.status import backlog_figures
from tests.support.alert_series import (
    ROOT,
    Recording,
    every_tick,
    firing,
    promtool_test,
    run_promtool,
)
from tests.support.broker import BrokerHelper
from tests.support.faults import broker_proxy, service_proxy
from tests.support.relay import make_relay
from tests.support.threads import in_background

pytestmark = pytest.mark.integration

TICK_S = 0.25
HEALTHY, OUTAGE, GONE = 12, 20, 8  # ticks of each phase
WATCHED = [
    "OutboxRelayAbsent",
    "OutboxRelayStalled",
    "OutboxRelayDependencyDown",
    "OutboxRelayDependencyRefused",
    "OutboxRelayNotReady",
    "OutboxOldestPendingTooOld",
    "OutboxPartitionUnowned",
]


def publish_one(database_url: str, schema: str, exchange: str, n: int) -> None:
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn, exchange=exchange, routing_key="k", payload={"n": n}, schema=schema
        )


def test_alerts_fire_on_recorded_broker_and_database_outages_and_a_missing_relay(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, tmp_path: Path
) -> None:
    exchange = broker.exchange()
    broker.queue(bind=(exchange, "#"))
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    recording = Recording(tick_s=TICK_S)
    marks: dict[str, int] = {}
    with (
        service_proxy(database_url, 5432) as (db_proxy, db_url),
        broker_proxy(amqp_url) as (amqp_proxy, broker_url),
    ):
        registry.register(BacklogCollector(lambda: backlog_figures(db_url, schema)))
        relay = make_relay(db_url, broker_url, schema, observer=metrics, reconnect_max_s=0.5)
        tick = every_tick(TICK_S)

        def phase(name: str, ticks: int, *, write: bool = True) -> None:
            marks[name] = len(recording.ticks)
            for n in range(ticks):
                if write and n % 4 == 0:
                    publish_one(database_url, schema, exchange, len(recording.ticks))
                recording.scrape(registry)
                tick()

        with in_background(relay.run, relay.stop, name="relay"):
            phase("healthy", HEALTHY)
            amqp_proxy.accepting = False
            amqp_proxy.cut()
            phase("broker down", OUTAGE)
            amqp_proxy.accepting = True
            phase("broker back", HEALTHY)
            db_proxy.accepting = False
            db_proxy.cut()
            phase("database down", OUTAGE, write=False)  # the application's writes wait too
            db_proxy.accepting = True
            phase("database back", HEALTHY)
        marks["gone"] = len(recording.ticks)
        for _ in range(GONE):
            recording.gone()

    def end_of(name: str, following: str) -> int:
        assert marks[following] - marks[name] > 0
        return marks[following] - 1

    checks = [
        firing([], at_tick=end_of("healthy", "broker down")),
        firing(
            [
                ("OutboxRelayDependencyDown", {"service": "broker"}),
                ("OutboxRelayNotReady", {"service": "broker"}),
                ("OutboxOldestPendingTooOld", {}),
            ],
            at_tick=end_of("broker down", "broker back"),
        ),
        firing([], at_tick=end_of("broker back", "database down")),
        firing(
            [
                ("OutboxRelayDependencyDown", {"service": "database"}),
                ("OutboxRelayNotReady", {"service": "database"}),
            ],
            at_tick=end_of("database down", "database back"),
        ),
        firing([], at_tick=end_of("database back", "gone")),
        firing([("OutboxRelayAbsent", {})], at_tick=marks["gone"] + GONE - 1),
    ]
    # Only the watched alerts: others (backlog, dead rows) have their own tests.
    for check in checks:
        names = "|".join(WATCHED)
        check["expr"] = (
            f'count by (alertname, service) (ALERTS{{alertstate="firing", alertname=~"{names}"}})'
        )
    test_file = promtool_test(recording, checks, tmp_path / "alerts_test.yml")
    result = run_promtool(test_file)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nphases: {marks}"

    keep = os.environ.get("OUTBOX_RELAY_RECORD_ALERT_SERIES")
    if keep:
        recorded = yaml.safe_load(test_file.read_text())
        recorded["rule_files"] = [
            os.path.relpath(ROOT / "deploy/prometheus/alerts.yml", Path(keep).parent)
        ]
        Path(keep).write_text(
            "# Recorded by tests/integration/test_alert_rules.py from real outages (one scrape\n"
            f"# per {TICK_S} s replayed as one per minute); phases start at ticks {marks}.\n"
            + yaml.safe_dump(recorded, sort_keys=False, width=1000)
        )


def test_the_recorded_alert_tests_pass() -> None:
    result = run_promtool(ROOT / "tests" / "prometheus" / "alerts_test.yml")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
