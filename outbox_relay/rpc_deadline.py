"""Deadlines for a pika BlockingConnection's calls: the one module that reaches into
pika's blocking adapter for them.

A BlockingConnection waits for the broker's reply to an RPC (a queue declare, a
``basic_get``, a publisher confirm, the close handshake) with no timeout at all: a broker
that never answers, or a network that silently drops everything, holds the caller for
good. Its public ``call_later`` does not help: those callbacks run only from
``process_data_events``, never while an RPC waits. The I/O loop under the connection
(``connection._impl.ioloop``) does run its own timers while it waits, so a deadline is a
timer there that raises out of the wait. The connection is unusable afterwards; close it
with :func:`close_within`. ``tests/integration/test_rpc_deadline.py`` fails when a pika
release changes this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pika
import pika.exceptions

from outbox_relay.errors import BrokerUnavailableError

RPC_TIMEOUT_S = 30.0  # a declare on a loaded cluster takes seconds, never this long
CLOSE_TIMEOUT_S = 5.0
_ABORT_ROUNDS = 10


class _Expired(Exception):  # noqa: N818 - internal signal, never seen outside this module
    """Raised by the timer, inside pika's wait, when the deadline passed."""


@contextlib.contextmanager
def deadline(connection: pika.BlockingConnection, timeout_s: float, what: str) -> Iterator[None]:
    """Raise BrokerUnavailableError when the calls made inside take more than
    ``timeout_s`` seconds in all; ``what`` names the operation in the message."""
    ioloop = connection._impl.ioloop

    def expire() -> None:
        raise _Expired

    handle = ioloop.call_later(timeout_s, expire)
    try:
        yield
    except _Expired:
        raise BrokerUnavailableError(
            f"RabbitMQ did not answer within {timeout_s:g} s while {what}: the broker may be "
            "overloaded or under a resource alarm (`rabbitmq-diagnostics alarms`), or the "
            "network drops traffic; check the broker, then run the command again"
        ) from None
    finally:
        ioloop.remove_timeout(handle)


def close_within(connection: pika.BlockingConnection, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close ``connection``, waiting at most ``timeout_s`` for the broker's answer, then
    drop the socket; never raises."""
    if connection.is_closed:
        return
    with (
        contextlib.suppress(BrokerUnavailableError, pika.exceptions.AMQPError, OSError),
        deadline(connection, timeout_s, "closing the connection"),
    ):
        connection.close()
    if not connection.is_closed:
        _abort(connection)


def _abort(connection: pika.BlockingConnection) -> None:
    """Drop the socket of a connection whose broker does not answer the close."""
    with contextlib.suppress(pika.exceptions.AMQPError, OSError, AssertionError):
        # What pika itself does when a heartbeat times out: end the stream with a reason.
        connection._impl._terminate_stream(
            pika.exceptions.StreamLostError("the broker did not answer the close")
        )
    for _ in range(_ABORT_ROUNDS):  # the abort completes on the I/O loop
        if connection.is_closed:
            return
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.process_data_events(time_limit=0)
