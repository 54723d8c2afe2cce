"""RabbitMQ topology from one declarative file: exchanges, queues, retry tiers, parking lots.

Build a :class:`Topology` in code or load one with :func:`load_topology`, then
:func:`plan` (look, change nothing) or :func:`apply` (declare, idempotent). The derived
names and broker arguments of a :class:`QueueSpec` are pure functions, so the consumer
SDK knows where a retry or a parked message goes. See ``docs/topology.md``.

:func:`apply` and :func:`plan` talk to the broker: they (and pika) load on first use, so
the model alone imports without pika.
"""

from __future__ import annotations

from outbox_relay.durations import parse_duration_ms
from outbox_relay.topology.conflicts import Inequivalence, parse_precondition_failed
from outbox_relay.topology.loader import load_topology, parse_topology
from outbox_relay.topology.model import (
    Binding,
    ExchangeSpec,
    InvalidTopologyError,
    QueueDeclaration,
    QueueRole,
    QueueSpec,
    QueueType,
    RetryPolicy,
    Topology,
    parking_queue_name,
    retry_queue_names,
)
from outbox_relay.topology.plan import (
    Action,
    ApplyReport,
    Plan,
    PlanItem,
    TopologyConflictError,
    TopologyPartlyAppliedError,
)


def plan(amqp_url: str, topology: Topology, *, rpc_timeout_s: float | None = None) -> Plan:
    """What applying ``topology`` would create, what already matches and what conflicts
    (:func:`outbox_relay.topology.broker.plan`)."""
    from outbox_relay.topology import broker  # noqa: PLC0415 - pika only when used

    if rpc_timeout_s is None:
        return broker.plan(amqp_url, topology)
    return broker.plan(amqp_url, topology, rpc_timeout_s=rpc_timeout_s)


def apply(amqp_url: str, topology: Topology, *, rpc_timeout_s: float | None = None) -> ApplyReport:
    """Declare what ``topology`` needs, idempotently
    (:func:`outbox_relay.topology.broker.apply`)."""
    from outbox_relay.topology import broker  # noqa: PLC0415 - pika only when used

    if rpc_timeout_s is None:
        return broker.apply(amqp_url, topology)
    return broker.apply(amqp_url, topology, rpc_timeout_s=rpc_timeout_s)


__all__ = [
    "Action",
    "ApplyReport",
    "Binding",
    "ExchangeSpec",
    "Inequivalence",
    "InvalidTopologyError",
    "Plan",
    "PlanItem",
    "QueueDeclaration",
    "QueueRole",
    "QueueSpec",
    "QueueType",
    "RetryPolicy",
    "Topology",
    "TopologyConflictError",
    "TopologyPartlyAppliedError",
    "apply",
    "load_topology",
    "parking_queue_name",
    "parse_duration_ms",
    "parse_precondition_failed",
    "parse_topology",
    "plan",
    "retry_queue_names",
]
