"""Connecting to one of several RabbitMQ nodes, and knowing which one is in use.

Order: each new connection tries the nodes in the order given, starting with the node
after the one used (or tried) last, so a node that dropped the connection, or refused it,
is tried last and the clients of a cluster do not all crowd onto its first node after a
node stops. The first connection goes to the first node. There is no shuffle: the order is
predictable, and a list written in a different order on each host spreads the load.

Within one attempt every node is tried once, at once (a stopped node refuses in
milliseconds); only when all refused does the caller's reconnect backoff wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pika
import structlog

from outbox_relay.amqp_nodes import NodeListError, node_of, split_urls
from outbox_relay.amqp_url import describe_amqp_error, url_parameters
from outbox_relay.errors import BrokerMisconfiguredError, BrokerUnavailableError, ConfigurationError
from outbox_relay.urls import redact_url, scrub

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Node:
    """One broker node: its URL, pika's parameters for it, and how logs name it."""

    url: str
    params: pika.URLParameters

    @property
    def name(self) -> str:
        """``host:port``: the node in logs, the status and the metric label."""
        return node_of(self.url)

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


def parse_nodes(url: str, *, dead_peer_timeout_s: float = 0.0) -> tuple[Node, ...]:
    """The nodes ``url`` lists (see :mod:`outbox_relay.amqp_nodes`), each with pika's
    parameters; raises ConfigurationError naming what is wrong (never a password)."""
    try:
        urls = split_urls(url)
    except NodeListError as exc:
        raise ConfigurationError(f"--amqp-url {redact_url(url)}: {exc}") from None
    return tuple(
        Node(url=one, params=url_parameters(one, dead_peer_timeout_s=dead_peer_timeout_s))
        for one in urls
    )


class BrokerNodes:
    """The nodes of one client (a publisher, a consumer, a topology run) and which of
    them it is connected to. Used from one thread."""

    def __init__(
        self,
        url: str,
        *,
        dead_peer_timeout_s: float = 0.0,
        on_node: Callable[[str], None] | None = None,
    ) -> None:
        self.nodes = parse_nodes(url, dead_peer_timeout_s=dead_peer_timeout_s)
        self._next = 0
        self._current: Node | None = None
        self._failing: set[str] = set()  # nodes whose failure was logged as a warning
        self._on_node = on_node

    @property
    def first(self) -> Node:
        return self.nodes[0]

    @property
    def current(self) -> Node | None:
        """The node of the last connection opened (None before the first)."""
        return self._current

    @property
    def redacted(self) -> str:
        """The redacted URL of the node in use; of every node before the first connection."""
        if self._current is not None:
            return self._current.redacted
        return ",".join(node.redacted for node in self.nodes)

    def order(self) -> list[Node]:
        """The nodes in the order the next connection tries them."""
        count = len(self.nodes)
        return [self.nodes[(self._next + k) % count] for k in range(count)]

    def ordered_url(self) -> str:
        """The node URLs in :meth:`order`, comma-separated: for a one-off connection
        (the consumer's declarations) that should try the same node first."""
        return ",".join(node.url for node in self.order())

    def open(
        self,
        connect: Callable[[Node], T],
        *,
        errors: tuple[type[BaseException], ...] = (BrokerUnavailableError,),
    ) -> T:
        """``connect(node)`` for each node in :meth:`order` until one succeeds; what it
        returned. When every node failed, raises what the last one raised (``errors``
        are the failures that move on to the next node)."""
        last: BaseException | None = None
        for node in self.order():
            self._next = (self.nodes.index(node) + 1) % len(self.nodes)
            try:
                result = connect(node)
            except errors as exc:
                last = exc
                if len(self.nodes) > 1:
                    # A warning once per node until a connection to it succeeds: the
                    # reconnect loop tries every node again on each attempt.
                    first_time = node.name not in self._failing
                    self._failing.add(node.name)
                    (log.warning if first_time else log.debug)(
                        "broker.node_unavailable",
                        node=node.name,
                        url=node.redacted,
                        error=_reason(exc, node),
                        misconfigured=isinstance(exc, BrokerMisconfiguredError),
                    )
                continue
            moved = self._current is None or self._current.name != node.name
            if moved and len(self.nodes) > 1:
                log.info("broker.node_connected", node=node.name, url=node.redacted)
            self._current = node
            self._failing.discard(node.name)
            if self._on_node is not None:
                self._on_node(node.name)
            return result
        assert last is not None  # noqa: S101 - nodes is never empty (parse_nodes)
        raise last


def _reason(error: BaseException, node: Node) -> str:
    """Why ``node`` refused, never with its password (pika's own errors may quote parts
    of the URL; ours are redacted already)."""
    if isinstance(error, BrokerUnavailableError):
        return str(error)
    return scrub(describe_amqp_error(error), node.url)


class NodeInUse:
    """The broker node a running relay is on, for the metric label and ``/readyz``: set
    from the I/O thread on each connection, read by the HTTP thread (a str swap)."""

    def __init__(self, *, on_change: Callable[[str], None] | None = None) -> None:
        self.node: str | None = None
        self._on_change = on_change

    def connected_to(self, node: str) -> None:
        if self._on_change is not None:
            self._on_change(node)
        self.node = node  # last: once /readyz names it, the metric has it too

    def readiness(self, probe: Callable[[], tuple[bool, str]]) -> Callable[[], tuple[bool, str]]:
        """``probe`` whose details also name the broker node in use, once there is one."""

        def ready() -> tuple[bool, str]:
            ok, detail = probe()
            node = self.node
            return ok, f"{detail}; broker node {node}" if node else detail

        return ready
