"""A broker in memory, behind the pika connection the publisher drives.

``Publisher(url=..., connection_factory=broker.connection)`` makes the publisher open
:class:`FakeConnection`\\ s instead of sockets: they run on a real pika I/O loop (timers
only), answer the opening of the connection, of channels and of confirm mode at once,
record what is published, and let the test speak for the broker: ack, nack, return,
close a channel or the connection, block publishers, or fall silent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pika.exceptions
from pika.adapters.select_connection import IOLoop
from pika.spec import Basic, BasicProperties, Confirm, Exchange

from outbox_relay.amqp_fields import DEFAULT_FRAME_MAX_BYTES

Callback = Callable[..., Any]


@dataclass(frozen=True)
class Published:
    """One basic_publish, as the broker got it."""

    tag: int  # its delivery tag on its channel
    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties


class FakeChannel:
    def __init__(self, connection: FakeConnection, number: int) -> None:
        self.connection = connection
        self.number = number
        self.is_open = True
        self.confirming = False
        self._on_close: list[Callback] = []
        self._on_return: list[Callback] = []
        self._on_confirm: Callback | None = None
        self._tag = 0

    @property
    def is_closed(self) -> bool:
        return not self.is_open

    def add_on_close_callback(self, callback: Callback) -> None:
        self._on_close.append(callback)

    def add_on_return_callback(self, callback: Callback) -> None:
        self._on_return.append(callback)

    def confirm_delivery(self, ack_nack_callback: Callback, callback: Callback) -> None:
        self._on_confirm = ack_nack_callback
        self.confirming = True
        self.connection.soon(lambda: callback(SimpleNamespace(method=Confirm.SelectOk())))

    def basic_publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: BasicProperties,
        mandatory: bool = False,
    ) -> None:
        assert self.is_open, "published on a closed channel"
        self._tag += 1
        message = Published(self._tag, exchange, routing_key, body, properties)
        self.connection.broker.published.append(message)
        if self.connection.broker.on_publish is not None:
            self.connection.broker.on_publish(self, message)

    def exchange_declare(self, exchange: str, *, passive: bool, callback: Callback) -> None:
        broker = self.connection.broker
        if exchange in broker.missing:
            error = pika.exceptions.ChannelClosedByBroker(
                404, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'"
            )
            self.connection.soon(lambda: self.closed_by_broker(error))
        else:
            self.connection.soon(lambda: callback(SimpleNamespace(method=Exchange.DeclareOk())))

    def close(self) -> None:
        self.is_open = False

    # -- the broker speaking ------------------------------------------------------------

    def confirm(self, tag: int, *, multiple: bool, ack: bool) -> None:
        assert self._on_confirm is not None, "not in confirm mode"
        method = (Basic.Ack if ack else Basic.Nack)(delivery_tag=tag, multiple=multiple)
        self._on_confirm(SimpleNamespace(method=method))

    def returned(self, message: Published, reply_code: int, reply_text: str) -> None:
        method = Basic.Return(
            reply_code=reply_code,
            reply_text=reply_text,
            exchange=message.exchange,
            routing_key=message.routing_key,
        )
        for callback in self._on_return:
            callback(self, method, message.properties, message.body)

    def closed_by_broker(self, reason: BaseException) -> None:
        self.is_open = False
        for callback in self._on_close:
            callback(self, reason)


class FakeConnection:
    """What ``Publisher`` uses of a
    :class:`~outbox_relay.publisher.pika_transport.ChunkedConnection`."""

    def __init__(
        self,
        broker: FakeBroker,
        params: Any,
        *,
        on_open_callback: Callback,
        on_open_error_callback: Callback,
        on_close_callback: Callback,
    ) -> None:
        self.broker = broker
        self.params = SimpleNamespace(frame_max=broker.frame_max, source=params)
        self.ioloop = IOLoop()
        self.is_open = False
        self.is_closed = False
        self.holding = False
        self.channels: list[FakeChannel] = []
        self._on_close = on_close_callback
        self._on_blocked: list[Callback] = []
        self._on_unblocked: list[Callback] = []
        if broker.refuse_connections is not None:
            error = broker.refuse_connections
            self.soon(lambda: on_open_error_callback(self, error))
        else:
            self.soon(lambda: self._opened(on_open_callback))

    def soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` from the I/O loop, unless the broker fell silent."""
        if not self.broker.silent:
            self.ioloop.call_later(0, callback)

    def _opened(self, on_open: Callback) -> None:
        self.is_open = True
        on_open(self)

    def add_on_connection_blocked_callback(self, callback: Callback) -> None:
        self._on_blocked.append(callback)

    def add_on_connection_unblocked_callback(self, callback: Callback) -> None:
        self._on_unblocked.append(callback)

    def channel(self, on_open_callback: Callback) -> None:
        channel = FakeChannel(self, len(self.channels) + 1)
        self.channels.append(channel)
        self.soon(lambda: on_open_callback(channel))

    def release_held(self) -> None:
        self.holding = False

    def unwritten(self) -> int:
        return self.broker.unwritten

    def close(self) -> None:
        self.soon(
            lambda: self.closed(pika.exceptions.ConnectionClosedByClient(200, "Normal shutdown"))
        )

    def abort(self) -> None:
        self.closed(pika.exceptions.StreamLostError("aborted"))

    def closed(self, reason: BaseException) -> None:
        """The connection closed: pika closes each open channel first, then it."""
        if self.is_closed:
            return
        for channel in self.channels:
            if channel.is_open:
                channel.closed_by_broker(reason)
        self.is_open, self.is_closed = False, True
        self._on_close(self, reason)

    def blocked(self, reason: str) -> None:
        frame = SimpleNamespace(method=SimpleNamespace(reason=reason))
        for callback in self._on_blocked:
            callback(self, frame)

    def unblocked(self) -> None:
        for callback in self._on_unblocked:
            callback(self, SimpleNamespace(method=None))


class FakeBroker:
    """The broker behind the :class:`FakeConnection`\\ s it makes (pass
    :meth:`connection` as the publisher's ``connection_factory``)."""

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.published: list[Published] = []
        self.missing: set[str] = set()  # exchanges that do not exist
        self.frame_max = DEFAULT_FRAME_MAX_BYTES  # as negotiated
        self.unwritten = 0  # bytes the socket has yet to take
        self.silent = False  # answers nothing more (a stalled peer)
        self.refuse_connections: BaseException | None = None
        # Called with each message as it is published: a test's broker answering at once.
        self.on_publish: Callable[[FakeChannel, Published], None] | None = None

    def connection(self, params: Any, **callbacks: Callback) -> FakeConnection:
        connection = FakeConnection(self, params, **callbacks)
        self.connections.append(connection)
        return connection

    @property
    def current(self) -> FakeConnection:
        return self.connections[-1]

    @property
    def channel(self) -> FakeChannel:
        """The confirm-mode channel the publisher sends on."""
        return [c for c in self.current.channels if c.confirming][-1]

    @property
    def ioloop(self) -> IOLoop:
        return self.current.ioloop

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        self.channel.confirm(tag, multiple=multiple, ack=True)

    def nack(self, tag: int, *, multiple: bool = False) -> None:
        self.channel.confirm(tag, multiple=multiple, ack=False)

    def return_(self, message: Published) -> None:
        """Return ``message`` unroutable (its ack is still to come)."""
        self.channel.returned(message, 312, "NO_ROUTE")

    def close_channel(self, reason: BaseException) -> None:
        self.channel.closed_by_broker(reason)

    def close_connection(self, reason: BaseException) -> None:
        self.current.closed(reason)

    def close(self) -> None:
        for connection in self.connections:
            connection.ioloop.close()
