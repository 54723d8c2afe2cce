"""What the consumer runner and its flow gate report as they go, for metrics
(:class:`~outbox_relay.observability.consumer_metrics.ConsumerMetrics`), and the observer
that records nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from outbox_relay.consumer.worker import Result


class FlowObserver(Protocol):
    """What the flow gate reports (a part of :class:`ConsumerObserver`)."""

    def token_waited(self, *, queue: str, handler: str, seconds: float) -> None: ...

    def paused_for(self, *, queue: str, handler: str, seconds: float) -> None: ...


class ConsumerObserver(Protocol):
    """What the runner reports, from its I/O thread (e.g. to ConsumerMetrics)."""

    def watch_in_flight(self, running: Callable[[], int]) -> None: ...

    def settled(self, *, queue: str, handler: str, result: Result, settled_as: str) -> None: ...

    def outage(self) -> None: ...

    def dependency(self, service: str, *, up: bool, refused: bool) -> None: ...

    def connected_to(self, node: str) -> None: ...

    def token_waited(self, *, queue: str, handler: str, seconds: float) -> None: ...

    def paused_for(self, *, queue: str, handler: str, seconds: float) -> None: ...


class Unobserved:
    """A :class:`ConsumerObserver` that records nothing: a runner without metrics."""

    def watch_in_flight(self, running: Callable[[], int]) -> None:
        pass

    def settled(self, *, queue: str, handler: str, result: Result, settled_as: str) -> None:
        pass

    def outage(self) -> None:
        pass

    def dependency(self, service: str, *, up: bool, refused: bool) -> None:
        pass

    def connected_to(self, node: str) -> None:
        pass

    def token_waited(self, *, queue: str, handler: str, seconds: float) -> None:
        pass

    def paused_for(self, *, queue: str, handler: str, seconds: float) -> None:
        pass
