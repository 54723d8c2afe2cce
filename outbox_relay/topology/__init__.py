"""RabbitMQ topology from one declarative file: exchanges, queues, retry tiers, parking lots.

Build a :class:`Topology` in code or load one with :func:`load_topology`, then
:func:`plan` (look, change nothing) or :func:`apply` (declare, idempotent). The derived
names and broker arguments of a :class:`QueueSpec` are pure functions, so the consumer
SDK knows where a retry or a parked message goes. See ``docs/topology.md``.
"""

from __future__ import annotations

from outbox_relay.durations import parse_duration_ms
from outbox_relay.topology.broker import apply, plan
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
