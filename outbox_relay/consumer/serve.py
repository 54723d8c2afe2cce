"""Running a consumer app as a process: the runner, its metrics and its HTTP endpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from outbox_relay.consumer.app import ConsumerApp
from outbox_relay.consumer.runner import Runner
from outbox_relay.consumer.settings import ConsumerSettings
from outbox_relay.observability.consumer_metrics import ConsumerMetrics
from outbox_relay.observability.http import HealthServer


def instrumented_runner(
    app: ConsumerApp, settings: ConsumerSettings
) -> tuple[Runner, CollectorRegistry]:
    """A runner reporting to :class:`ConsumerMetrics` in a registry of its own."""
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, handlers=[(h.queue, h.name) for h in app.handlers])
    return Runner(app, settings, observer=metrics), registry


@contextlib.contextmanager
def endpoints(
    runner: Runner, registry: CollectorRegistry, settings: ConsumerSettings
) -> Iterator[HealthServer | None]:
    """``/healthz``, ``/readyz`` and ``/metrics`` while the block runs (None when off)."""
    if not settings.http_port:
        yield None
        return
    server = HealthServer(
        host=settings.http_host,
        port=settings.http_port,
        registry=registry,
        liveness=runner.liveness,
        readiness=runner.readiness,
    ).start()
    try:
        yield server
    finally:
        server.close()


def serve(app: ConsumerApp, settings: ConsumerSettings) -> None:
    """Consume until SIGTERM or SIGINT (call from the main thread), with the endpoints."""
    runner, registry = instrumented_runner(app, settings)
    with endpoints(runner, registry, settings):
        runner.run_until_signalled()
