"""Which RabbitMQ node of a cluster a process is connected to, as a metric."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge


class NodeGauge:
    """A gauge labelled ``node`` (host:port): 1 for the node of the connection opened last,
    0 for every node used before, so a dashboard sees the moves between nodes."""

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(name, documentation, ["node"], registry=registry)
        self._seen: set[str] = set()

    def connected_to(self, node: str) -> None:
        self._seen.add(node)
        for seen in self._seen:
            self.gauge.labels(node=seen).set(1 if seen == node else 0)
