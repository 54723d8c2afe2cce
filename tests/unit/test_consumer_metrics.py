"""ConsumerMetrics as the runner's observer: which series move for which result."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from outbox_relay.consumer import ConsumerApp
from outbox_relay.consumer.app import Handler
from outbox_relay.consumer.failure import ErrorInfo
from outbox_relay.consumer.message import Delivery
from outbox_relay.consumer.worker import Job, Kind, Result
from outbox_relay.observability.consumer_metrics import OUTCOMES, ConsumerMetrics, outcome_of

UNDECODABLE = "outbox_relay.consumer.errors.UndecodableMessageError"


def handler() -> Handler[...]:
    app = ConsumerApp(name="t")

    @app.handler(exchange="orders", queue="billing.orders")
    def on_order(message: object) -> None:
        pass

    return app.handlers[0]


def result(kind: Kind, error_type: str | None = None, duration_s: float = 0.01) -> Result:
    delivery = Delivery(
        body=b"{}",
        exchange="orders",
        routing_key="k",
        redelivered=False,
        message_id="m-1",
        content_type="application/json",
        headers={},
        timestamp=None,
        queue="billing.orders",
    )
    error = ErrorInfo(type=error_type, message="boom") if error_type else None
    return Result(Job(delivery, handler(), token=None), kind, 1, duration_s, error=error)


class TestOutcomeOf:
    @pytest.mark.parametrize(
        ("kind", "error_type", "settled_as", "expected"),
        [
            (Kind.HANDLED, None, "handled", "ok"),
            (Kind.DUPLICATE, None, "duplicate", "duplicate"),
            (Kind.RETRY, "ValueError", "retried", "retried"),
            (Kind.RETRY, "ValueError", "parked", "parked"),
            (Kind.PARK, "outbox_relay.consumer.errors.Reject", "parked", "rejected"),
            (Kind.PARK, UNDECODABLE, "parked", "undecodable"),
            (Kind.RETRY, "HandlerTimeoutError", "retried", "timeout"),
            (Kind.RETRY, "HandlerTimeoutError", "parked", "timeout"),
            (Kind.REQUEUE, "StoreUnavailableError", "requeued", "requeued"),
            (Kind.RETRY, "ValueError", "requeued", "requeued"),  # the republish was refused
            (Kind.PAUSED, "outbox_relay.consumer.errors.RateLimited", "paused", "rate_limited"),
        ],
    )
    def test_each_settlement_has_one_outcome(
        self, kind: Kind, error_type: str | None, settled_as: str, expected: str
    ) -> None:
        assert outcome_of(result(kind, error_type), settled_as) == expected
        assert expected in OUTCOMES


class TestConsumerMetrics:
    def value(self, registry: CollectorRegistry, name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    def test_every_series_exists_before_the_first_message(self) -> None:
        registry = CollectorRegistry()
        ConsumerMetrics(registry, handlers=[("billing.orders", "on_order")])
        for outcome in OUTCOMES:
            assert (
                self.value(
                    registry,
                    "outbox_relay_consumer_messages_total",
                    queue="billing.orders",
                    outcome=outcome,
                )
                == 0
            )
        for name in ("duplicates", "retries", "parked"):
            total = f"outbox_relay_consumer_{name}_total"
            assert self.value(registry, total, queue="billing.orders") == 0
        count = "outbox_relay_consumer_handler_duration_seconds_count"
        assert self.value(registry, count, queue="billing.orders", handler="on_order") == 0

    def test_token_waits_and_pauses_per_handler(self) -> None:
        registry = CollectorRegistry()
        metrics = ConsumerMetrics(registry, handlers=[("billing.orders", "on_order")])
        paused = "outbox_relay_consumer_paused_seconds_total"
        labels = {"queue": "billing.orders", "handler": "on_order"}
        assert self.value(registry, paused, **labels) == 0
        metrics.token_waited(queue="billing.orders", handler="on_order", seconds=0.2)
        metrics.token_waited(queue="billing.orders", handler="on_order", seconds=0.4)
        metrics.paused_for(queue="billing.orders", handler="on_order", seconds=30)
        wait = "outbox_relay_consumer_rate_limit_wait_seconds"
        assert self.value(registry, f"{wait}_count", **labels) == 2
        assert self.value(registry, f"{wait}_sum", **labels) == pytest.approx(0.6)
        assert self.value(registry, paused, **labels) == 30

    def test_settled_results_move_their_counters_and_the_histogram(self) -> None:
        registry = CollectorRegistry()
        metrics = ConsumerMetrics(registry, handlers=[("billing.orders", "on_order")])
        for kind, error_type, settled_as in [
            (Kind.HANDLED, None, "handled"),
            (Kind.DUPLICATE, None, "duplicate"),
            (Kind.RETRY, "ValueError", "retried"),
            (Kind.RETRY, "ValueError", "parked"),
            (Kind.PARK, UNDECODABLE, "parked"),
        ]:
            metrics.settled(
                queue="billing.orders",
                handler="on_order",
                result=result(kind, error_type, duration_s=0.2),
                settled_as=settled_as,
            )

        def messages(outcome: str) -> float | None:
            return self.value(
                registry,
                "outbox_relay_consumer_messages_total",
                queue="billing.orders",
                outcome=outcome,
            )

        assert [messages(o) for o in ("ok", "duplicate", "retried", "parked", "undecodable")] == [
            1,
            1,
            1,
            1,
            1,
        ]
        assert messages("rejected") == 0
        q = {"queue": "billing.orders"}
        assert self.value(registry, "outbox_relay_consumer_duplicates_total", **q) == 1
        assert self.value(registry, "outbox_relay_consumer_retries_total", **q) == 1
        assert self.value(registry, "outbox_relay_consumer_parked_total", **q) == 2
        duration = "outbox_relay_consumer_handler_duration_seconds"
        labels = {"queue": "billing.orders", "handler": "on_order"}
        assert self.value(registry, f"{duration}_count", **labels) == 5
        assert self.value(registry, f"{duration}_sum", **labels) == pytest.approx(1.0)

    def test_a_queue_it_was_not_told_about_gets_its_series_on_first_use(self) -> None:
        registry = CollectorRegistry()
        metrics = ConsumerMetrics(registry, handlers=[])
        metrics.settled(
            queue="other", handler="h", result=result(Kind.HANDLED), settled_as="handled"
        )
        assert (
            self.value(
                registry, "outbox_relay_consumer_messages_total", queue="other", outcome="ok"
            )
            == 1
        )

    def test_in_flight_and_outages(self) -> None:
        registry = CollectorRegistry()
        metrics = ConsumerMetrics(registry, handlers=[])
        running = [3]
        metrics.watch_in_flight(lambda: running[0])
        metrics.outage()
        assert self.value(registry, "outbox_relay_consumer_in_flight") == 3
        running[0] = 0
        assert self.value(registry, "outbox_relay_consumer_in_flight") == 0
        assert self.value(registry, "outbox_relay_consumer_outages_total") == 1
