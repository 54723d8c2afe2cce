"""Publishing batches to RabbitMQ with pipelined publisher confirms.

pika's ``BlockingChannel`` waits for each confirm in turn (the slow path). This adapter
drives a ``SelectConnection`` from the caller's thread instead: :meth:`Publisher.send`
writes a whole batch and returns a :class:`Sending`, whose ``outcomes()`` runs pika's
I/O loop until every message has been acked, nacked or returned, or the channel or
connection died. Two batches may be in flight at once: the caller sends the next one
while the confirms of the first are still coming. Between batches
:meth:`Publisher.wait` runs the same loop, so heartbeats are answered while the relay
sleeps, and it also watches a file descriptor (the database's LISTEN socket) so a
NOTIFY wakes the relay at once.

The package, by concern:

- :mod:`.core`: :class:`Publisher`, the channel, and writing a batch to it;
- :mod:`.link`: the connection, and running its I/O loop until something happens;
- :mod:`.confirming`: waiting for a batch's confirms, :class:`Sending`; what the broker
  said is kept by :class:`outbox_relay.relay.confirms.ConfirmTracker`;
- :mod:`.exchanges`: whether the exchanges exist (a passive declare, remembered);
- :mod:`.rows`: how a row becomes an AMQP message, and whether it can;
- :mod:`.blame`: which rows a channel or connection close is blamed on;
- :mod:`.pika_transport`: the connection's large writes, fencing pika's private hooks.

These are the only relay modules that import pika.
"""

from __future__ import annotations

from outbox_relay.publisher.confirming import Sending
from outbox_relay.publisher.core import CONFIRM_TIMEOUT_S, Publisher
from outbox_relay.publisher.rows import checked, refusal
from outbox_relay.relay.ports import SendResult

__all__ = ["CONFIRM_TIMEOUT_S", "Publisher", "SendResult", "Sending", "checked", "refusal"]
