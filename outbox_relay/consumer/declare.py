"""The broker objects a consumer app needs, as an :mod:`outbox_relay.topology` model, and
the one place that declares them.

Each handler's queue becomes a :class:`~outbox_relay.topology.QueueSpec` with a retry
policy, so its delay tiers and parking lot are named and argued exactly as
``outbox-relay topology apply`` would make them; for a queue ``billing.orders`` with
delays 1 s, 10 s and 1 min::

    billing.orders.retry.1s   billing.orders.retry.10s   billing.orders.retry.1m
    billing.orders.parking

A delay queue holds a message for its TTL, then dead-letters it through the default
exchange straight back to ``billing.orders`` (no other subscriber of the topic sees it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from outbox_relay.consumer.failure import RetryRoute
from outbox_relay.errors import ConfigurationError, TopologyError
from outbox_relay.topology import (
    ApplyReport,
    Binding,
    ExchangeSpec,
    QueueSpec,
    QueueType,
    RetryPolicy,
    Topology,
)

if TYPE_CHECKING:
    from outbox_relay.consumer.handler import Handler


def delay_ms(delay_s: float) -> int:
    return max(1, round(delay_s * 1000))


def queue_spec(handler: Handler[...]) -> QueueSpec:
    """The topology of one handler's queue; raises ConfigurationError naming the problem."""
    try:
        return QueueSpec(
            name=handler.queue,
            type=QueueType(handler.queue_type),
            bindings=tuple(Binding(handler.exchange, pattern) for pattern in handler.bindings),
            retry=RetryPolicy(
                delays_ms=tuple(delay_ms(d) for d in handler.retry_delays_s),
                max_attempts=handler.max_attempts,
            ),
            max_priority=handler.max_priority,
        )
    except (TopologyError, ValueError) as exc:
        raise ConfigurationError(f"queue {handler.queue!r}: {exc}") from exc


def retry_route(spec: QueueSpec) -> RetryRoute:
    """Where a failed message of ``spec``'s queue goes: its delay tiers and parking lot."""
    if spec.retry is None:
        raise ConfigurationError(f"queue {spec.name!r} has no retry policy")
    parking = spec.parking_queue_name()
    assert parking is not None  # noqa: S101 - a queue with a retry policy has a parking lot
    tiers = tuple(
        (name, ms / 1000.0)
        for name, ms in zip(spec.retry_queue_names(), spec.retry.delays_ms, strict=True)
    )
    return RetryRoute(
        queue=spec.name, tiers=tiers, parking=parking, max_attempts=spec.retry.max_attempts
    )


def topology_for(handlers: Sequence[Handler[...]]) -> Topology:
    """Every handler's queue, and the exchanges the handlers ask to declare."""
    exchanges = {h.exchange: ExchangeSpec(h.exchange) for h in handlers if h.declare_exchange}
    return Topology(exchanges=tuple(exchanges.values()), queues=[h.spec for h in handlers])


def declare(amqp_url: str, handlers: Sequence[Handler[...]]) -> ApplyReport:
    """Declare what the handlers need; idempotent. Raises TopologyConflictError (nothing
    declared) when a queue or exchange exists with other arguments, BrokerUnavailableError
    when the broker cannot be reached."""
    from outbox_relay.topology import broker  # noqa: PLC0415 - pika only when running

    return broker.apply(amqp_url, topology_for(handlers))
