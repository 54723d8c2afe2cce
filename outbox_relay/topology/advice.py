"""What to tell an operator about a topology before applying it: the priority levels past
RabbitMQ's recommendation, and what a broker of a given version lacks.

Pure: the broker's version comes from :mod:`outbox_relay.topology.broker`.
"""

from __future__ import annotations

from outbox_relay.topology.model import RECOMMENDED_MAX_PRIORITY, QueueType, Topology

AT_LEAST_ONCE_SINCE = (3, 10)  # quorum message TTL and at-least-once dead-lettering


def supports_at_least_once(version: tuple[int, ...]) -> bool:
    """Whether a broker of ``version`` has quorum message TTL and at-least-once
    dead-lettering; an unknown (empty) version is assumed recent."""
    return not version or version >= AT_LEAST_ONCE_SINCE


def priority_warnings(topology: Topology) -> tuple[str, ...]:
    """Priority queues with more levels than RabbitMQ recommends, said plainly."""
    return tuple(
        f"queue {q.name!r}: max_priority = {q.max_priority} is above the "
        f"{RECOMMENDED_MAX_PRIORITY} RabbitMQ recommends; each level costs memory and CPU "
        "per queue, and few applications use more than a handful"
        for q in topology.queues
        if q.max_priority is not None and q.max_priority > RECOMMENDED_MAX_PRIORITY
    )


def version_warnings(topology: Topology, version: tuple[int, ...]) -> tuple[str, ...]:
    """What the topology loses on a broker of ``version``, said plainly."""
    quorum = [q.name for q in topology.queues if q.type is QueueType.QUORUM and q.retry]
    if supports_at_least_once(version) or not quorum:
        return ()
    shown = ".".join(map(str, version))
    warning = (
        f"RabbitMQ {shown} is older than 3.10: quorum queues {', '.join(quorum)} dead-letter "
        "at most once (no x-dead-letter-strategy) and their delay tiers are classic queues; "
        "upgrade for at-least-once dead-lettering"
    )
    return (warning,)
