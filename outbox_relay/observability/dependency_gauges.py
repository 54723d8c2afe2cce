"""The pair of gauges by service that the relay and the consumer both export: whether the
process can use a service, and whether the service refuses its configuration."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge


class DependencyGauges:
    """``up`` is 1 while the process can use the service; ``refused`` is 1 while the
    service refuses the process's configuration in a way no retry fixes. The series of
    ``services`` exist from the start, at 0."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        up: str,
        up_help: str,
        refused: str,
        refused_help: str,
        services: Iterable[str],
    ) -> None:
        self.up = Gauge(up, up_help, ["service"], registry=registry)
        self.refused = Gauge(refused, refused_help, ["service"], registry=registry)
        for service in services:
            self.set(service, up=False, refused=False)

    def set(self, service: str, *, up: bool, refused: bool) -> None:
        self.up.labels(service=service).set(1 if up else 0)
        self.refused.labels(service=service).set(1 if refused else 0)
