"""The topology as data: exchanges, queues, retry policies, and what they derive.

Everything here is pure. A :class:`QueueSpec` with a :class:`RetryPolicy` derives one
delay queue per tier and a parking-lot queue, named predictably from the queue, and the
broker arguments of all three kinds; the consumer SDK uses the same functions to know
where to republish a failed message.

Derived names, for a queue ``billing`` with delays 1 s, 10 s and 1 min::

    billing.retry.1s   billing.retry.10s   billing.retry.1m   billing.parking

A delay queue holds a message for its tier's TTL, then dead-letters it through the
default exchange ``""`` with the routing key ``billing``: straight back to ``billing``
and to no other queue bound to the same topic. The main queue dead-letters (a reject
without requeue, a quorum delivery limit) to ``billing.parking`` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from outbox_relay.errors import TopologyError

DEFAULT_EXCHANGE = ""  # AMQP's default exchange: routes by queue name
RETRY_INFIX = ".retry."
PARKING_SUFFIX = ".parking"
MAX_NAME_LENGTH = 255  # AMQP short string
EXCHANGE_TYPES = ("topic", "direct", "fanout", "headers")
MAX_PRIORITY = 255  # x-max-priority's ceiling
RECOMMENDED_MAX_PRIORITY = 10  # RabbitMQ: each level costs memory and CPU per queue

_UNITS_MS = (("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


class QueueType(str, Enum):
    """Classic queues dead-letter at most once; quorum queues can dead-letter at least once."""

    CLASSIC = "classic"
    QUORUM = "quorum"


class QueueRole(str, Enum):
    """Why a queue exists: declared in the file, or derived from a retry policy."""

    MAIN = "main"
    DELAY = "delay"
    PARKING = "parking"


def delay_label(delay_ms: int) -> str:
    """The tier's name part: the largest unit that divides the delay, e.g. ``1m``, ``1500ms``."""
    for unit, size in _UNITS_MS:
        if delay_ms % size == 0:
            return f"{delay_ms // size}{unit}"
    raise AssertionError("unreachable: milliseconds divide every integer")  # pragma: no cover


def _check_name(kind: str, name: str) -> None:
    if not name or not name.strip():
        raise TopologyError(f"{kind} name is empty: give it a name")
    if len(name.encode()) > MAX_NAME_LENGTH:
        raise TopologyError(f"{kind} name {name!r} is longer than {MAX_NAME_LENGTH} bytes")
    if name.startswith("amq."):
        raise TopologyError(
            f"{kind} name {name!r} starts with 'amq.', which RabbitMQ reserves: rename it"
        )


@dataclass(frozen=True)
class Binding:
    """Route messages from ``exchange`` whose routing key matches ``routing_key``."""

    exchange: str
    routing_key: str = "#"

    def __post_init__(self) -> None:
        if not self.exchange:
            raise TopologyError(
                "a binding names the default exchange '', which routes by queue name and "
                "cannot be bound: name a declared exchange"
            )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and after how long a failed message is tried again.

    ``max_attempts`` counts every delivery to a handler, the first included. Retry n
    (after failed attempt n) waits ``delays_ms[n - 1]``; attempts beyond the list reuse
    the last tier.
    """

    delays_ms: tuple[int, ...]
    max_attempts: int

    def __post_init__(self) -> None:
        if not self.delays_ms:
            raise TopologyError("retry delays are empty: list at least one delay, e.g. ['1s']")
        for delay in self.delays_ms:
            if delay <= 0:
                raise TopologyError(f"retry delay {delay} ms is not positive: use e.g. '1s'")
        if len(set(self.delays_ms)) != len(self.delays_ms):
            raise TopologyError(
                f"retry delays {list(self.delays_ms)} (ms) repeat a tier: list each delay once"
            )
        if self.max_attempts < 1:
            raise TopologyError(f"max_attempts is {self.max_attempts}: it must be at least 1")

    def delay_ms_for(self, attempt: int) -> int | None:
        """The delay before retrying after failed ``attempt`` (1-based); None when exhausted."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        if attempt >= self.max_attempts:
            return None
        return self.delays_ms[min(attempt, len(self.delays_ms)) - 1]


@dataclass(frozen=True)
class ExchangeSpec:
    """An exchange; ``alternate_exchange`` receives what no binding routes."""

    name: str
    type: str = "topic"
    durable: bool = True
    alternate_exchange: str | None = None

    def __post_init__(self) -> None:
        _check_name("exchange", self.name)
        if self.type not in EXCHANGE_TYPES:
            raise TopologyError(
                f"exchange {self.name!r} has type {self.type!r}: use one of "
                + ", ".join(EXCHANGE_TYPES)
            )
        if self.alternate_exchange == self.name:
            raise TopologyError(f"exchange {self.name!r} names itself as its alternate exchange")

    @property
    def arguments(self) -> dict[str, Any]:
        if self.alternate_exchange is None:
            return {}
        return {"alternate-exchange": self.alternate_exchange}


@dataclass(frozen=True)
class QueueDeclaration:
    """One queue exactly as it is declared on the broker."""

    name: str
    role: QueueRole
    arguments: Mapping[str, Any]
    durable: bool = True


@dataclass(frozen=True)
class QueueSpec:
    """A consumer's queue, its bindings and (optionally) its retry policy.

    ``delivery_limit`` applies to quorum queues only; it defaults to the retry policy's
    ``max_attempts`` and stops a message that crashes its consumer from looping forever.
    ``max_priority`` (classic queues, 1-255) makes a priority queue (``x-max-priority``):
    a message of higher ``priority`` is delivered before those of lower priority waiting
    in it.
    """

    name: str
    type: QueueType = QueueType.CLASSIC
    bindings: tuple[Binding, ...] = ()
    retry: RetryPolicy | None = None
    delivery_limit: int | None = None
    max_priority: int | None = None

    def __post_init__(self) -> None:
        _check_name("queue", self.name)
        if self.max_priority is not None:
            if self.type is not QueueType.CLASSIC:
                raise TopologyError(
                    f"queue {self.name!r}: max_priority needs type = 'classic' (quorum "
                    "queues take no x-max-priority): drop max_priority or use a classic queue"
                )
            if not 1 <= self.max_priority <= MAX_PRIORITY:
                raise TopologyError(
                    f"queue {self.name!r}: max_priority is {self.max_priority}, it must be "
                    f"1 to {MAX_PRIORITY} (RabbitMQ recommends at most "
                    f"{RECOMMENDED_MAX_PRIORITY})"
                )
        if self.delivery_limit is not None:
            if self.type is not QueueType.QUORUM:
                raise TopologyError(
                    f"queue {self.name!r}: delivery_limit needs type = 'quorum' "
                    "(classic queues have no delivery limit)"
                )
            if self.delivery_limit < 1:
                raise TopologyError(
                    f"queue {self.name!r}: delivery_limit is {self.delivery_limit}, "
                    "it must be at least 1"
                )

    # -- derived names ------------------------------------------------------------------

    def retry_queue_names(self) -> tuple[str, ...]:
        """One delay queue per tier, in tier order; empty without a retry policy."""
        if self.retry is None:
            return ()
        return tuple(f"{self.name}{RETRY_INFIX}{delay_label(d)}" for d in self.retry.delays_ms)

    def parking_queue_name(self) -> str | None:
        """Where exhausted and rejected messages go; None without a retry policy."""
        return None if self.retry is None else f"{self.name}{PARKING_SUFFIX}"

    def retry_queue_for(self, attempt: int) -> str | None:
        """The delay queue to republish to after failed ``attempt`` (1-based).

        None means the attempts are exhausted (or there is no retry policy): send the
        message to :meth:`parking_queue_name` instead.
        """
        if self.retry is None:
            return None
        delay = self.retry.delay_ms_for(attempt)
        if delay is None:
            return None
        return self.retry_queue_names()[self.retry.delays_ms.index(delay)]

    # -- broker arguments ---------------------------------------------------------------

    def effective_delivery_limit(self) -> int | None:
        if self.type is not QueueType.QUORUM:
            return None
        if self.delivery_limit is not None:
            return self.delivery_limit
        return None if self.retry is None else self.retry.max_attempts

    def _type_arguments(self, *, at_least_once: bool) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-queue-type": self.type.value}
        if self.type is QueueType.QUORUM and self.retry is not None and at_least_once:
            # At-least-once dead-lettering (RabbitMQ >= 3.10) requires reject-publish.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def main_arguments(self, *, at_least_once: bool = True) -> dict[str, Any]:
        """The main queue's arguments: its type and, with a retry policy, its parking lot."""
        arguments = self._type_arguments(at_least_once=at_least_once)
        parking = self.parking_queue_name()
        if parking is not None:
            arguments["x-dead-letter-exchange"] = DEFAULT_EXCHANGE
            arguments["x-dead-letter-routing-key"] = parking
        limit = self.effective_delivery_limit()
        if limit is not None:
            arguments["x-delivery-limit"] = limit
        if self.max_priority is not None:
            arguments["x-max-priority"] = self.max_priority
        return arguments

    def delay_arguments(self, delay_ms: int, *, at_least_once: bool = True) -> dict[str, Any]:
        """A delay tier's arguments: hold for ``delay_ms``, then back to this queue only.

        Without ``at_least_once`` (RabbitMQ < 3.10, where quorum queues have no message
        TTL) the tier is a classic queue.
        """
        if at_least_once:
            arguments = self._type_arguments(at_least_once=True)
        else:
            arguments = {"x-queue-type": QueueType.CLASSIC.value}
        arguments["x-message-ttl"] = delay_ms
        arguments["x-dead-letter-exchange"] = DEFAULT_EXCHANGE
        arguments["x-dead-letter-routing-key"] = self.name
        return arguments

    def parking_arguments(self) -> dict[str, Any]:
        """The parking lot keeps messages until someone looks at them: no TTL, no DLX."""
        return {"x-queue-type": self.type.value}

    def declarations(self, *, at_least_once: bool = True) -> tuple[QueueDeclaration, ...]:
        """The main queue, its delay tiers and its parking lot, in declaration order.

        Derived queues come first so that nothing dead-letters into a missing queue.
        """
        declared: list[QueueDeclaration] = []
        parking = self.parking_queue_name()
        if parking is not None and self.retry is not None:
            declared.append(QueueDeclaration(parking, QueueRole.PARKING, self.parking_arguments()))
            declared.extend(
                QueueDeclaration(
                    name,
                    QueueRole.DELAY,
                    self.delay_arguments(delay, at_least_once=at_least_once),
                )
                for name, delay in zip(self.retry_queue_names(), self.retry.delays_ms, strict=True)
            )
        declared.append(
            QueueDeclaration(
                self.name, QueueRole.MAIN, self.main_arguments(at_least_once=at_least_once)
            )
        )
        return tuple(declared)


def retry_queue_names(queue: QueueSpec) -> tuple[str, ...]:
    """See :meth:`QueueSpec.retry_queue_names`."""
    return queue.retry_queue_names()


def parking_queue_name(queue: QueueSpec) -> str | None:
    """See :meth:`QueueSpec.parking_queue_name`."""
    return queue.parking_queue_name()


@dataclass(frozen=True)
class Topology:
    """Exchanges and queues to declare together. Names are unique, derived ones included."""

    exchanges: Sequence[ExchangeSpec] = field(default_factory=tuple)
    queues: Sequence[QueueSpec] = field(default_factory=tuple)
    source: str | None = field(default=None, compare=False)  # the file, named in errors

    def __post_init__(self) -> None:
        object.__setattr__(self, "exchanges", tuple(self.exchanges))
        object.__setattr__(self, "queues", tuple(self.queues))
        problem = duplicate_problem(self)
        if problem is not None:
            raise InvalidTopologyError(problem[1], key=problem[0])

    def exchange(self, name: str) -> ExchangeSpec | None:
        return next((e for e in self.exchanges if e.name == name), None)

    def undeclared_references(self) -> tuple[tuple[str, str], ...]:
        """(key, exchange) for each binding or alternate exchange naming an exchange this
        topology does not declare; those must already exist on the broker."""
        declared = {e.name for e in self.exchanges}
        references = [
            (f"queues[{i}].bindings[{j}].exchange", binding.exchange)
            for i, queue in enumerate(self.queues)
            for j, binding in enumerate(queue.bindings)
        ]
        references += [
            (f"exchanges[{i}].alternate_exchange", e.alternate_exchange)
            for i, e in enumerate(self.exchanges)
            if e.alternate_exchange is not None
        ]
        return tuple((key, name) for key, name in references if name not in declared)


def find_duplicate(names_per_item: Sequence[Sequence[str]]) -> tuple[str, int, int] | None:
    """The first name that two items (or one item twice) declare: (name, first, second)."""
    owners: dict[str, int] = {}
    for index, names in enumerate(names_per_item):
        for name in names:
            if name in owners:
                return name, owners[name], index
            owners[name] = index
    return None


def duplicate_problem(topology: Topology) -> tuple[str, str] | None:
    """(key, message) for the first name the topology declares twice, else None."""
    queues = topology.queues
    for kind, names in (
        ("exchange", [e.name for e in topology.exchanges]),
        ("queue", [q.name for q in queues]),
    ):
        found = find_duplicate([[name] for name in names])
        if found is not None:
            return (
                f"{kind}s[{found[2]}].name",
                f"{kind} {found[0]!r} is declared twice: give each {kind} its own name",
            )
    found = find_duplicate([[d.name for d in q.declarations()] for q in queues])
    if found is None:
        return None
    name, first, second = found
    return (
        f"queues[{second}].name",
        (
            f"queues {queues[first].name!r} and {queues[second].name!r} both declare a queue "
            f"named {name!r} (derived queues are named '<queue>{RETRY_INFIX}<delay>' and "
            f"'<queue>{PARKING_SUFFIX}'): rename one of them"
        ),
    )


class InvalidTopologyError(TopologyError):
    """Raised when a topology is invalid; ``key`` names the offending entry when known."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
