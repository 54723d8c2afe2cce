"""Prometheus metrics of the relay.

Counters and histograms are updated by the relay loop through :class:`RelayMetrics`
(the loop's observer). The backlog figures are read from the database when Prometheus
scrapes, on a connection of their own, so they cost nothing between scrapes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from outbox_relay.message import OutboxRow
from outbox_relay.observability.bulk_histogram import BulkHistogram
from outbox_relay.observability.dependency_gauges import DependencyGauges
from outbox_relay.observability.node_gauge import NodeGauge
from outbox_relay.relay.outcome import Failure, Reason

SERVICES = ("database", "broker")
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LATENCY_BUCKETS_S = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class RelayMetrics:
    """The relay loop's observer: every figure the loop itself knows."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "outbox_relay_published_total",
            "Rows the broker confirmed and the relay deleted.",
            registry=registry,
        )
        self.failed = Counter(
            "outbox_relay_failed_total",
            "Publish attempts the broker refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.dead = Counter(
            "outbox_relay_dead_total",
            "Rows marked dead after their last attempt.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "outbox_relay_batch_size",
            "Rows a batch took: claimed, within its byte budget.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        # Observed once per row, between two batches: a histogram that takes them all
        # at once.
        self.latency = BulkHistogram(
            "outbox_relay_commit_to_confirm_seconds",
            "From the row's insert to the broker's confirm (includes time spent in the outbox).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.partitions_owned = Gauge(
            "outbox_relay_partitions_owned",
            "Partitions this relay holds a lease on.",
            registry=registry,
        )
        self.outages = Counter(
            "outbox_relay_outages_total",
            "Times the database or the broker became unreachable.",
            ["service"],
            registry=registry,
        )
        self.last_iteration = Gauge(
            "outbox_relay_last_iteration_timestamp_seconds",
            "Unix time of the relay loop's last completed iteration.",
            registry=registry,
        )
        self.last_publish = Gauge(
            "outbox_relay_last_publish_timestamp_seconds",
            "Unix time the broker last confirmed rows of this relay (0: none yet).",
            registry=registry,
        )
        self.dependencies = DependencyGauges(
            registry,
            up="outbox_relay_dependency_up",
            up_help="1 while the relay is connected to the service (database, broker).",
            refused="outbox_relay_dependency_refused",
            refused_help="1 while the service refuses the relay's configuration in a way no "
            "retry fixes (login, database, role, vhost, TLS, missing outbox); see the logs' "
            "relay.dependency_refused.",
            services=SERVICES,
        )
        self.broker_node = NodeGauge(
            "outbox_relay_broker_node",
            "1 for the RabbitMQ node (host:port) the relay's connection was last opened to.",
            registry=registry,
        )

        # Every series exists from the start, so rate() and alerts see zeros, not gaps.
        for reason in Reason:
            self.failed.labels(reason=reason.value)
        for service in SERVICES:
            self.outages.labels(service=service)

    def batch_settled(
        self,
        *,
        claimed: int,
        published: Sequence[OutboxRow],
        failures: Sequence[Failure],
        now: dt.datetime,
    ) -> None:
        self.batch_size.observe(claimed)
        self.published.inc(len(published))
        if published:
            self.last_publish.set(now.timestamp())
        self.latency.observe_many(
            max(0.0, (now - row.created_at).total_seconds()) for row in published
        )
        for failure in failures:
            self.failed.labels(reason=failure.reason.value).inc()
            if failure.dead:
                self.dead.inc()
        self.last_iteration.set(now.timestamp())

    def iteration(self, now: dt.datetime) -> None:
        self.last_iteration.set(now.timestamp())

    def partitions(self, owned: int) -> None:
        self.partitions_owned.set(owned)

    def connected_to(self, node: str) -> None:
        """The broker node in use is ``node``: its series is 1, every other node's 0."""
        self.broker_node.connected_to(node)

    def outage(self, service: str) -> None:
        self.outages.labels(service=service).inc()

    def dependency(self, service: str, *, up: bool, refused: bool) -> None:
        self.dependencies.set(service, up=up, refused=refused)


class BacklogCollector(Collector):
    """Reads the outbox's backlog at scrape time through ``read``."""

    FIGURES: ClassVar[Mapping[str, str]] = {
        "outbox_relay_backlog_rows": "Rows not yet published and not dead.",
        "outbox_relay_due_rows": "Pending rows due now (not waiting for a delay or retry).",
        "outbox_relay_dead_rows": "Rows marked dead, waiting for `outbox-relay failed`.",
        "outbox_relay_oldest_pending_seconds": "Age of the oldest pending row (0 when none).",
        "outbox_relay_unowned_partitions": "Partitions no live relay holds.",
        "outbox_relay_backlog_scrape_ok": "1 when the backlog query succeeded.",
    }

    def __init__(self, read: Callable[[], dict[str, float | None]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self._read()
        for name, help_text in self.FIGURES.items():
            value = figures.get(name)
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
