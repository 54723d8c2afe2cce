"""The parking lot on the broker: read, replay and delete parked messages (pika).

Reading is non-destructive: messages are taken with ``basic_get`` *without* acking, held
unacked while the scan goes on, and given back at the end with one
``basic_nack(multiple=True, requeue=True)`` (also when anything fails: closing the
channel requeues what it holds). RabbitMQ puts requeued messages back at their original
position, so the lot keeps its order; they do come back marked ``redelivered``. A scan
reads at most the messages the lot held when it started, so copies that fail again and
come back while a replay runs are not replayed twice.

A replayed message is published to its queue through the default exchange on a
confirm-mode channel with ``mandatory``; its parked copy is acked only once the broker
confirmed the new one. A crash in between leaves both (at least once; a handler with a
transaction recognises the second in its inbox), never neither.

The lot is read through :mod:`~outbox_relay.consumer.lenient_frames`: a message whose
headers pika cannot decode (the broker may dead-letter one here by itself, e.g. at a
quorum queue's delivery limit) lists with the reason and its raw properties instead of
dropping the connection; replayed, it goes back without the headers that could not be
read.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from outbox_relay.amqp_url import CONNECT_ERRORS, describe_amqp_error, unavailable
from outbox_relay.broker_nodes import BrokerNodes
from outbox_relay.consumer import lenient_frames
from outbox_relay.consumer.dead_letter import (
    DeadLetter,
    DeadLetterFilter,
    dead_letter,
    replay_headers,
    replay_target,
)
from outbox_relay.consumer.failure import (
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    RAW_PROPERTIES_HEADER,
    RAW_PROPERTIES_SIZE_HEADER,
)
from outbox_relay.consumer.settle import republished
from outbox_relay.errors import BrokerError, BrokerUnavailableError
from outbox_relay.rpc_deadline import RPC_TIMEOUT_S, close_within, deadline
from outbox_relay.urls import redact_url, scrub

PROGRESS_EVERY = 100
NOT_FOUND = 404

Progress = Callable[[int], None]


class ParkingLot:
    """One parking-lot queue, opened with ``with``. Raises BrokerError with what to do."""

    def __init__(self, amqp_url: str, queue: str, *, rpc_timeout_s: float = RPC_TIMEOUT_S) -> None:
        self.queue = queue
        self._url = amqp_url
        self._rpc_timeout_s = rpc_timeout_s
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def __enter__(self) -> ParkingLot:
        try:
            self._conn = BrokerNodes(self._url).open(
                lambda node: pika.BlockingConnection(node.params), errors=CONNECT_ERRORS
            )
            lenient_frames.install(self._conn)
            with self._deadline("opening a channel"):
                self._channel = self._conn.channel()
                self._channel.confirm_delivery()
        except BrokerUnavailableError:
            self.__exit__(None, None, None)
            raise
        except CONNECT_ERRORS as exc:
            self.__exit__(None, None, None)
            reason = scrub(describe_amqp_error(exc), self._url)
            # No chain: pika's own exception may quote the URL.
            raise unavailable(f"cannot connect to {redact_url(self._url)}: {reason}", exc) from None
        try:
            self.depth()  # fail early, with the name, when the queue is missing
        except BrokerError:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            close_within(conn)  # the broker requeues whatever is still unacked

    @property
    def channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            raise BrokerError("the parking lot is not open: use `with ParkingLot(...)`")
        return self._channel

    def depth(self) -> int:
        """Messages waiting in the lot (unacked ones not counted)."""
        try:
            with self._deadline(f"counting the messages in {self.queue!r}"):
                declared = self.channel.queue_declare(self.queue, passive=True)
            return int(declared.method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                raise BrokerError(
                    f"queue {self.queue!r} does not exist on {redact_url(self._url)}: check the "
                    "name (a queue's parking lot is '<queue>.parking')"
                ) from exc
            raise BrokerError(f"cannot read queue {self.queue!r}: {exc}") from exc

    # -- actions ------------------------------------------------------------------------

    def browse(self, where: DeadLetterFilter, *, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` matching messages, oldest first; all stay parked, in order."""
        return [letter for _tag, letter, _properties in self._matching(where, limit)]

    def find(self, message_id: str) -> DeadLetter | None:
        """The first parked message with ``message_id``; it stays parked."""
        found = self.browse(DeadLetterFilter(message_ids=frozenset({message_id})), limit=1)
        return found[0] if found else None

    def replay(
        self,
        where: DeadLetterFilter,
        *,
        limit: int | None = None,
        rate_per_s: float | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Move matching messages back to their queues with a fresh set of attempts, at
        most ``rate_per_s`` a second; how many moved. Raises BrokerError when the broker
        refuses one (its queue is gone): that one and the rest stay parked."""
        started = time.monotonic()
        moved = 0
        for tag, letter, properties in self._matching(where, limit):
            if rate_per_s:
                self._pause_until(started + moved / rate_per_s)
            target = replay_target(letter, self.queue)
            try:
                with self._deadline(f"sending message {letter.message_id} back to {target!r}"):
                    self.channel.basic_publish(
                        "",
                        target,
                        letter.body,
                        properties=republished(properties, replay_headers(properties.headers)),
                        mandatory=True,
                    )
            except pika.exceptions.UnroutableError as exc:
                raise BrokerError(
                    f"message {letter.message_id} cannot go back to queue {target!r}: no such "
                    f"queue; it stays in {self.queue!r} (start the consumer, or run "
                    "`outbox-relay topology apply`, then replay again)"
                ) from exc
            except pika.exceptions.NackError as exc:
                raise BrokerError(
                    f"the broker refused to take message {letter.message_id} back into "
                    f"{target!r}; it stays in {self.queue!r}"
                ) from exc
            self.channel.basic_ack(tag)  # only now: the copy in its queue is confirmed
            moved += 1
            _report(progress, moved)
        return moved

    def purge(
        self,
        where: DeadLetterFilter,
        *,
        limit: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Delete matching messages for good; how many."""
        deleted = 0
        for tag, _letter, _properties in self._matching(where, limit):
            self.channel.basic_ack(tag)
            deleted += 1
            _report(progress, deleted)
        return deleted

    # -- scanning -----------------------------------------------------------------------

    def _matching(
        self, where: DeadLetterFilter, limit: int | None
    ) -> Iterator[tuple[int, DeadLetter, pika.BasicProperties]]:
        if limit is not None and limit <= 0:
            return
        taken = 0
        for tag, letter, properties in self._scan():
            if where.matches(letter):
                yield tag, letter, properties
                taken += 1
                if limit is not None and taken >= limit:
                    return

    def _scan(self) -> Iterator[tuple[int, DeadLetter, pika.BasicProperties]]:
        """Each message the lot held at the start, unacked; what the caller did not ack is
        requeued when the scan ends, however it ends."""
        channel = self.channel
        try:
            for _ in range(self.depth()):
                with self._deadline(f"reading {self.queue!r}"):
                    method, properties, body = channel.basic_get(self.queue, auto_ack=False)
                if method is None or properties is None:
                    return
                letter = dead_letter(
                    body=body or b"",
                    routing_key=method.routing_key,
                    exchange=method.exchange,
                    message_id=properties.message_id,
                    content_type=properties.content_type,
                    timestamp=properties.timestamp,
                    headers=_readable_headers(properties),
                )
                yield int(method.delivery_tag), letter, properties
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerError(
                f"lost the connection while reading {self.queue!r}: {exc!r}; nothing was "
                "lost (the broker requeues unacked messages)"
            ) from exc
        finally:
            if channel.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    # closing the connection requeues them too, should this fail
                    channel.basic_nack(0, multiple=True, requeue=True)

    def _deadline(self, what: str) -> contextlib.AbstractContextManager[None]:
        if self._conn is None:
            raise BrokerError("the parking lot is not open: use `with ParkingLot(...)`")
        return deadline(self._conn, self._rpc_timeout_s, what)

    def _pause_until(self, moment: float) -> None:
        assert self._conn is not None  # noqa: S101 - open while scanning
        delay = moment - time.monotonic()
        if delay > 0:
            self._conn.sleep(delay)  # serves heartbeats meanwhile


def _readable_headers(properties: pika.BasicProperties) -> dict[str, Any] | None:
    """The headers, or what stands for them when pika could not decode them."""
    found = lenient_frames.undecodable(properties)
    if found is None:
        return properties.headers  # type: ignore[no-any-return]
    return {
        ERROR_TYPE_HEADER: "UndecodableMessageError",
        ERROR_MESSAGE_HEADER: found.reason(),
        RAW_PROPERTIES_HEADER: base64.b64encode(found.raw).decode("ascii"),
        RAW_PROPERTIES_SIZE_HEADER: len(found.raw),
    }


def _report(progress: Progress | None, done: int) -> None:
    if progress is not None and done % PROGRESS_EVERY == 0:
        progress(done)
