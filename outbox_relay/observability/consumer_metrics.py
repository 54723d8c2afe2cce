"""Prometheus metrics of the consumer.

The runner's I/O thread reports each settled delivery to :class:`ConsumerMetrics` (the
runner's observer), so updating a figure costs a dict lookup and a counter increment;
the in-flight gauge is read from the worker pool when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from outbox_relay.consumer.errors import HandlerTimeoutError, UndecodableMessageError
from outbox_relay.consumer.worker import Kind, Result
from outbox_relay.observability.dependency_gauges import DependencyGauges
from outbox_relay.observability.node_gauge import NodeGauge

HANDLER_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_WAIT_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Why a delivery ended where it did; one label value per settled delivery.
OUTCOMES = (
    "ok",  # the handler's work committed
    "duplicate",  # the inbox had it: skipped and acked
    "retried",  # the handler failed: sent to a delay tier
    "parked",  # the handler failed its last attempt: sent to the parking lot
    "rejected",  # the handler raised Reject: sent to the parking lot
    "undecodable",  # no message id or a broken body: sent to the parking lot
    "timeout",  # the handler ran past its timeout: retried or parked
    "requeued",  # the database was down, the republish refused, or another copy ran: given back
    "rate_limited",  # the handler raised RateLimited: held until its pause ends, no attempt
)
_DIRECT_OUTCOMES = {Kind.HANDLED: "ok", Kind.DUPLICATE: "duplicate", Kind.PAUSED: "rate_limited"}
_TIMEOUT_TYPE = HandlerTimeoutError.__name__
_UNDECODABLE_TYPE = f"{UndecodableMessageError.__module__}.{UndecodableMessageError.__qualname__}"


def outcome_of(result: Result, settled_as: str) -> str:
    """The ``outcome`` label of a delivery settled as ``settled_as`` (the runner's word:
    handled, duplicate, retried, parked or requeued)."""
    direct = _DIRECT_OUTCOMES.get(result.kind)
    if direct is not None:
        return direct
    if settled_as == Kind.REQUEUE.value:
        return "requeued"
    error_type = result.error.type if result.error is not None else ""
    if error_type == _TIMEOUT_TYPE:
        return "timeout"
    if result.kind is Kind.PARK:
        return "undecodable" if error_type == _UNDECODABLE_TYPE else "rejected"
    return "parked" if settled_as == Kind.PARK.value else "retried"


class ConsumerMetrics:
    """The consumer runner's observer. ``handlers``: (queue, handler name) pairs, whose
    series are created up front so that rate() and alerts see zeros, not gaps."""

    def __init__(self, registry: CollectorRegistry, *, handlers: Iterable[tuple[str, str]]) -> None:
        self.messages = Counter(
            "outbox_relay_consumer_messages_total",
            "Deliveries settled, by queue and outcome (ok, duplicate, retried, parked, "
            "rejected, undecodable, timeout, requeued).",
            ["queue", "outcome"],
            registry=registry,
        )
        self.duplicates = Counter(
            "outbox_relay_consumer_duplicates_total",
            "Deliveries the inbox had already seen: acked without running the handler.",
            ["queue"],
            registry=registry,
        )
        self.retries = Counter(
            "outbox_relay_consumer_retries_total",
            "Failed deliveries republished to a delay tier.",
            ["queue"],
            registry=registry,
        )
        self.parked = Counter(
            "outbox_relay_consumer_parked_total",
            "Failed deliveries republished to the parking lot (see `outbox-relay dead-letters`).",
            ["queue"],
            registry=registry,
        )
        self.duration = Histogram(
            "outbox_relay_consumer_handler_duration_seconds",
            "Time from a worker taking a delivery to its result, commit included.",
            ["queue", "handler"],
            buckets=HANDLER_BUCKETS_S,
            registry=registry,
        )
        self.in_flight = Gauge(
            "outbox_relay_consumer_in_flight",
            "Handlers running now.",
            registry=registry,
        )
        self.outages = Counter(
            "outbox_relay_consumer_outages_total",
            "Times the broker became unreachable.",
            registry=registry,
        )
        self.dependencies = DependencyGauges(
            registry,
            up="outbox_relay_consumer_dependency_up",
            up_help="1 while the consumer can use the service (broker: connected and "
            "consuming; database: answering, else deliveries are paused).",
            refused="outbox_relay_consumer_dependency_refused",
            refused_help="1 while the service refuses the consumer's configuration in a way "
            "no retry fixes (login, database, role, vhost, TLS, missing inbox).",
            services=("broker",),  # the database's: if it has one
        )
        self.broker_node = NodeGauge(
            "outbox_relay_consumer_broker_node",
            "1 for the RabbitMQ node (host:port) the consumer's connection was last opened to.",
            registry=registry,
        )
        self.token_wait = Histogram(
            "outbox_relay_consumer_rate_limit_wait_seconds",
            "Time a delivery of a rate-limited handler waited for its token, unacked and "
            "outside any transaction.",
            ["queue", "handler"],
            buckets=TOKEN_WAIT_BUCKETS_S,
            registry=registry,
        )
        self.paused = Counter(
            "outbox_relay_consumer_paused_seconds_total",
            "Seconds a handler was paused because it (or the same handler in another "
            "process of the app) raised RateLimited.",
            ["queue", "handler"],
            registry=registry,
        )
        self._messages: dict[tuple[str, str], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}
        for queue, handler in handlers:
            self._series(queue, handler)

    def _series(self, queue: str, handler: str) -> None:
        for outcome in OUTCOMES:
            self._messages[queue, outcome] = self.messages.labels(queue=queue, outcome=outcome)
        self._durations[queue, handler] = self.duration.labels(queue=queue, handler=handler)
        self.paused.labels(queue=queue, handler=handler)
        for family in (self.duplicates, self.retries, self.parked):
            family.labels(queue=queue)

    def watch_in_flight(self, running: Callable[[], int]) -> None:
        self.in_flight.set_function(running)

    def settled(self, *, queue: str, handler: str, result: Result, settled_as: str) -> None:
        if (queue, handler) not in self._durations:
            self._series(queue, handler)
        outcome = outcome_of(result, settled_as)
        self._messages[queue, outcome].inc()
        self._durations[queue, handler].observe(result.duration_s)
        if settled_as == Kind.DUPLICATE.value:
            self.duplicates.labels(queue=queue).inc()
        elif settled_as == Kind.RETRY.value:
            self.retries.labels(queue=queue).inc()
        elif settled_as == Kind.PARK.value:
            self.parked.labels(queue=queue).inc()

    def connected_to(self, node: str) -> None:
        self.broker_node.connected_to(node)

    def token_waited(self, *, queue: str, handler: str, seconds: float) -> None:
        self.token_wait.labels(queue=queue, handler=handler).observe(seconds)

    def paused_for(self, *, queue: str, handler: str, seconds: float) -> None:
        self.paused.labels(queue=queue, handler=handler).inc(seconds)

    def outage(self) -> None:
        self.outages.inc()

    def dependency(self, service: str, *, up: bool, refused: bool) -> None:
        self.dependencies.set(service, up=up, refused=refused)
