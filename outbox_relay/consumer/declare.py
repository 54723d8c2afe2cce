"""The broker objects a handler needs, named and argued exactly as ``outbox_relay.topology``
derives them, and the one place that declares them.

For a queue ``billing.orders`` with delays 1 s, 10 s and 1 min::

    billing.orders.retry.1s   billing.orders.retry.10s   billing.orders.retry.1m
    billing.orders.parking

A delay queue holds a message for its TTL, then dead-letters it through the default
exchange straight back to ``billing.orders`` (no other subscriber of the topic sees
it). The main queue dead-letters to its parking lot, which keeps messages until someone
looks. Declaring is idempotent; a queue that exists with other arguments makes the
broker refuse, and the error says which queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from outbox_relay.consumer.failure import RetryRoute

if TYPE_CHECKING:
    from outbox_relay.consumer.app import Handler

DEFAULT_EXCHANGE = ""
RETRY_INFIX = ".retry."
PARKING_SUFFIX = ".parking"
_UNITS_MS = (("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


class DeclaringChannel(Protocol):
    """The part of a pika ``BlockingChannel`` used here."""

    def exchange_declare(
        self, exchange: str, exchange_type: str = ..., *, durable: bool = ...
    ) -> Any: ...
    def queue_declare(self, queue: str, *, durable: bool = ..., arguments: Any = ...) -> Any: ...
    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = ...) -> Any: ...


def delay_label(delay_ms: int) -> str:
    """The tier's name part: the largest unit that divides the delay, e.g. ``1m``, ``200ms``."""
    for unit, size in _UNITS_MS:
        if delay_ms % size == 0:
            return f"{delay_ms // size}{unit}"
    raise AssertionError("unreachable: milliseconds divide every integer")  # pragma: no cover


def delay_ms(delay_s: float) -> int:
    return max(1, round(delay_s * 1000))


def retry_route(handler: Handler) -> RetryRoute:
    """Where a failed message of ``handler`` goes: its delay tiers and parking lot."""
    tiers = tuple(
        (f"{handler.queue}{RETRY_INFIX}{delay_label(delay_ms(d))}", d)
        for d in handler.retry_delays_s
    )
    return RetryRoute(
        queue=handler.queue,
        tiers=tiers,
        parking=f"{handler.queue}{PARKING_SUFFIX}",
        max_attempts=handler.max_attempts,
    )


def queue_arguments(handler: Handler) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of the parking lot, the delay tiers and the main queue, in the
    order they are declared: nothing dead-letters into a queue that does not exist yet."""
    route = handler.route
    quorum = handler.queue_type == "quorum"
    kind: dict[str, Any] = {"x-queue-type": handler.queue_type}
    if quorum:
        kind |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    declared: list[tuple[str, dict[str, Any]]] = [
        (route.parking, {"x-queue-type": handler.queue_type})
    ]
    for name, delay in route.tiers:
        declared.append(
            (
                name,
                kind
                | {
                    "x-message-ttl": delay_ms(delay),
                    "x-dead-letter-exchange": DEFAULT_EXCHANGE,
                    "x-dead-letter-routing-key": handler.queue,
                },
            )
        )
    main = kind | {
        "x-dead-letter-exchange": DEFAULT_EXCHANGE,
        "x-dead-letter-routing-key": route.parking,
    }
    if quorum:
        main["x-delivery-limit"] = handler.max_attempts
    declared.append((handler.queue, main))
    return declared


def declare(channel: DeclaringChannel, handlers: list[Handler]) -> None:
    """Declare every handler's exchange, queues and bindings; idempotent."""
    for handler in handlers:
        channel.exchange_declare(handler.exchange, "topic", durable=True)
        for name, arguments in queue_arguments(handler):
            channel.queue_declare(name, durable=True, arguments=arguments)
        for pattern in handler.bindings:
            channel.queue_bind(handler.queue, handler.exchange, routing_key=pattern)
