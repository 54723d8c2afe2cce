"""Making RabbitMQ match a topology: the only topology module that imports pika.

:func:`plan` looks without touching: a passive declare per object tells whether it
exists; an object that exists is declared again, exactly as the topology asks, on a
throwaway channel. RabbitMQ treats an equivalent redeclaration as a no-op and refuses an
inequivalent one with PRECONDITION_FAILED (closing only that channel), so this changes
nothing either way. The refusal names one differing argument; the next attempt adopts
the existing value of that argument, until the declaration is accepted, so every
difference is found. (An object deleted by someone else between the passive check and
the redeclaration would be recreated: the one way ``plan`` can change the broker.)

:func:`apply` plans first and declares nothing when anything conflicts, then declares
what is missing and every binding (idempotent).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from outbox_relay.amqp_url import CONNECT_ERRORS, describe_amqp_error, unavailable
from outbox_relay.broker_nodes import BrokerNodes, Node
from outbox_relay.errors import BrokerError, BrokerUnavailableError
from outbox_relay.rpc_deadline import RPC_TIMEOUT_S, close_within, deadline
from outbox_relay.topology.advice import (
    priority_warnings,
    supports_at_least_once,
    version_warnings,
)
from outbox_relay.topology.conflicts import (
    CannotAdoptError,
    Inequivalence,
    adopt_current,
    explain,
    parse_precondition_failed,
)
from outbox_relay.topology.model import QueueRole, Topology
from outbox_relay.topology.plan import (
    Action,
    ApplyReport,
    Plan,
    PlanItem,
    TopologyConflictError,
    TopologyPartlyAppliedError,
)
from outbox_relay.urls import redact_url, scrub

CONNECT_TIMEOUT_S = 10.0
_NOT_FOUND = 404
_MAX_ROUNDS = 16  # more differing arguments than any queue has
_PIKA_CHANNEL_LOG = logging.getLogger("pika.channel")

Request = Mapping[str, Any]


def plan(amqp_url: str, topology: Topology, *, rpc_timeout_s: float = RPC_TIMEOUT_S) -> Plan:
    """What applying ``topology`` would create, what already matches and what conflicts.

    Each call to the broker gets ``rpc_timeout_s``; then BrokerUnavailableError.
    """
    with _connect(amqp_url, rpc_timeout_s=rpc_timeout_s) as broker:
        return broker.plan(topology)


def apply(
    amqp_url: str, topology: Topology, *, rpc_timeout_s: float = RPC_TIMEOUT_S
) -> ApplyReport:
    """Declare what ``topology`` needs; a second call finds everything up to date.

    Raises TopologyConflictError, having declared nothing, when an object exists with
    other arguments or a referenced exchange exists nowhere; TopologyPartlyAppliedError
    when the broker refuses a declaration half-way; BrokerUnavailableError when the
    broker cannot be reached or leaves a call unanswered for ``rpc_timeout_s``.
    """
    with _connect(amqp_url, rpc_timeout_s=rpc_timeout_s) as broker:
        result = broker.plan(topology)
        if not result.ok:
            raise TopologyConflictError(result)
        todo = result.having(Action.CREATE, Action.BIND)
        for done, item in enumerate(todo):
            error = broker.declare(item)
            if error is not None:
                raise TopologyPartlyAppliedError(
                    f"RabbitMQ refused {item.label()}: {error}",
                    applied=todo[:done],
                    not_applied=todo[done:],
                )
        return ApplyReport(
            vhost=result.vhost,
            created=result.having(Action.CREATE),
            matched=result.having(Action.MATCHES),
            bindings=result.having(Action.BIND),
            warnings=result.warnings,
        )


class _QuietRefusals(logging.Filter):
    """Drops pika's warning about each channel the broker closes, for the closes this
    module provokes on purpose (404 from existence checks, 406 from equivalence checks),
    in the calling thread only: the refusals are reported, explained, in the plan."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        provoked = record.thread == self._thread and record.msg.startswith(
            "Received remote Channel.Close"
        )
        return not provoked


@contextlib.contextmanager
def _connect(amqp_url: str, *, rpc_timeout_s: float = RPC_TIMEOUT_S) -> Iterator[_Broker]:
    def connect(node: Node) -> pika.BlockingConnection:
        params = node.params
        params.socket_timeout = params.blocked_connection_timeout = CONNECT_TIMEOUT_S
        return pika.BlockingConnection(params)

    nodes = BrokerNodes(amqp_url)  # a cluster's nodes, tried in turn
    params = nodes.first.params
    try:
        connection = nodes.open(connect, errors=CONNECT_ERRORS)
    except CONNECT_ERRORS as exc:
        reason = scrub(describe_amqp_error(exc), amqp_url)
        raise unavailable(f"cannot connect to {redact_url(amqp_url)}: {reason}", exc) from None
    quiet = _QuietRefusals()
    _PIKA_CHANNEL_LOG.addFilter(quiet)
    try:
        yield _Broker(connection, vhost=str(params.virtual_host), rpc_timeout_s=rpc_timeout_s)
    except pika.exceptions.AMQPConnectionError as exc:
        raise BrokerUnavailableError(
            f"lost the connection to {redact_url(amqp_url)}: {describe_amqp_error(exc)}"
        ) from exc
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(f"RabbitMQ refused an operation: {exc!r}") from exc
    finally:
        _PIKA_CHANNEL_LOG.removeFilter(quiet)
        close_within(connection)


def server_version(connection: pika.BlockingConnection) -> tuple[int, ...]:
    # pika keeps the server properties on the underlying connection only.
    properties = connection._impl.server_properties or {}
    raw = properties.get("version", b"")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class _Broker:
    def __init__(
        self, connection: pika.BlockingConnection, *, vhost: str, rpc_timeout_s: float
    ) -> None:
        self._connection = connection
        self.vhost = vhost
        self._rpc_timeout_s = rpc_timeout_s
        self.version = server_version(connection)

    # -- planning -----------------------------------------------------------------------

    def plan(self, topology: Topology) -> Plan:
        at_least_once = supports_at_least_once(self.version)
        items = [
            self._missing(topology, key, name) for key, name in topology.undeclared_references()
        ]
        for spec in topology.exchanges:
            request = {"type": spec.type, "durable": spec.durable, **spec.arguments}
            items.append(self._check("exchange", spec.name, request, ""))
        for queue in topology.queues:
            for declared in queue.declarations(at_least_once=at_least_once):
                request = {"durable": declared.durable, **declared.arguments}
                note = _role_note(declared.role, queue.name)
                items.append(self._check("queue", declared.name, request, note))
        items += [
            PlanItem(
                "binding",
                queue.name,
                Action.BIND,
                {"exchange": b.exchange, "queue": queue.name, "routing_key": b.routing_key},
            )
            for queue in topology.queues
            for b in queue.bindings
        ]
        return Plan(
            vhost=self.vhost,
            items=tuple(item for item in items if item is not None),
            warnings=version_warnings(topology, self.version) + priority_warnings(topology),
        )

    def _missing(self, topology: Topology, key: str, name: str) -> PlanItem | None:
        if self._exists("exchange", name):
            return None
        source = f"{topology.source}: " if topology.source else ""
        return PlanItem(
            "exchange",
            name,
            Action.MISSING,
            note=(
                f"{source}{key} names exchange {name!r}, which the topology does not declare "
                f"and vhost {self.vhost!r} does not have: declare it under [[exchanges]] or "
                "correct the name"
            ),
        )

    def _check(self, kind: str, name: str, request: Request, note: str) -> PlanItem:
        if not self._exists(kind, name):
            return PlanItem(kind, name, Action.CREATE, request, note)
        differences, refusal = self._differences(kind, name, request)
        if refusal is None:
            return PlanItem(kind, name, Action.MATCHES, request, note)
        messages = self._depth(name) if kind == "queue" else None
        explanation = explain(
            kind, name, differences, vhost=self.vhost, messages=messages, broker_text=refusal
        )
        return PlanItem(kind, name, Action.CONFLICT, request, explanation)

    def _differences(
        self, kind: str, name: str, request: Request
    ) -> tuple[tuple[Inequivalence, ...], str | None]:
        """Every argument that differs, and the broker's first refusal (None: it matches)."""
        found: list[Inequivalence] = []
        first_refusal: str | None = None
        for _ in range(_MAX_ROUNDS):
            refusal = self._refusal(
                partial(_declare, kind=kind, name=name, request=request),
                f"declaring {kind} {name!r} again to compare its arguments",
            )
            if refusal is None:
                break
            first_refusal = first_refusal or refusal
            difference = parse_precondition_failed(refusal)
            if difference is None or difference in found:
                break
            found.append(difference)
            try:
                request = adopt_current(request, difference)
            except CannotAdoptError:
                break
        return tuple(found), first_refusal

    # -- declaring ----------------------------------------------------------------------

    def declare(self, item: PlanItem) -> str | None:
        """Declare one planned item; the broker's refusal text, or None when it is done."""
        if item.kind == "binding":
            r = item.request
            return self._refusal(
                lambda ch: ch.queue_bind(r["queue"], r["exchange"], routing_key=r["routing_key"]),
                f"declaring {item.label()}",
            )
        return self._refusal(
            lambda ch: _declare(ch, item.kind, item.name, item.request), f"declaring {item.label()}"
        )

    # -- channels -----------------------------------------------------------------------

    def _refusal(self, operation: Callable[[BlockingChannel], object], what: str) -> str | None:
        """Run ``operation`` on a throwaway channel; the broker's refusal text, or None.
        Raises BrokerUnavailableError when the broker leaves it unanswered too long."""
        with deadline(self._connection, self._rpc_timeout_s, what):
            channel = self._connection.channel()
            try:
                operation(channel)
            except pika.exceptions.ChannelClosedByBroker as exc:
                return f"{exc.reply_code} {exc.reply_text}"
            if channel.is_open:
                channel.close()
            return None

    def _exists(self, kind: str, name: str) -> bool:
        refusal = self._refusal(
            lambda ch: _passive(ch, kind, name), f"checking whether {kind} {name!r} exists"
        )
        if refusal is None:
            return True
        if refusal.startswith(f"{_NOT_FOUND} "):
            return False
        raise BrokerError(f"cannot check {kind} {name!r} on vhost {self.vhost!r}: {refusal}")

    def _depth(self, queue: str) -> int | None:
        depth: list[int] = []
        self._refusal(
            lambda ch: depth.append(ch.queue_declare(queue, passive=True).method.message_count),
            f"counting the messages in queue {queue!r}",
        )
        return depth[0] if depth else None


def _passive(channel: BlockingChannel, kind: str, name: str) -> None:
    if kind == "exchange":
        channel.exchange_declare(name, passive=True)
    else:
        channel.queue_declare(name, passive=True)


def _declare(channel: BlockingChannel, kind: str, name: str, request: Request) -> None:
    arguments = {k: v for k, v in request.items() if k not in {"type", "durable"}}
    if kind == "exchange":
        channel.exchange_declare(
            name, request["type"], durable=request["durable"], arguments=arguments or None
        )
    else:
        channel.queue_declare(name, durable=request["durable"], arguments=arguments or None)


def _role_note(role: QueueRole, queue: str) -> str:
    if role is QueueRole.DELAY:
        return f"retry delay tier of {queue!r}"
    if role is QueueRole.PARKING:
        return f"parking lot of {queue!r}"
    return ""
