"""A delivery at the runner, in and out: a pika delivery becomes a job for the workers
(:func:`received`), carrying what settling it needs; once its handler finished it is
acked, given back to its queue, held for a rate-limit pause, or republished to its next
queue (a delay tier or the parking lot, with the failure headers) on the runner's
confirm-mode channel and then acked (:func:`settle`).

What is republished is made to fit: header values AMQP cannot carry again travel as text
(:func:`~outbox_relay.consumer.failure.failure_headers`), and headers that would overflow
the negotiated frame size are cut (:func:`fitted`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from outbox_relay.consumer import lenient_frames
from outbox_relay.consumer.database import DatabaseWatch
from outbox_relay.consumer.failure import (
    DROPPED_HEADERS_HEADER,
    destination,
    failure_headers,
    fit_headers,
)
from outbox_relay.consumer.gate import FlowGate
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.message import Delivery, original_exchange, original_routing_key
from outbox_relay.consumer.observer import ConsumerObserver
from outbox_relay.consumer.worker import Job, Kind, Result

PERSISTENT = 2


@dataclass(frozen=True)
class DeliveryToken:
    """What the runner keeps to settle a delivery: the generation of the connection it
    came on, its delivery tag and its properties."""

    generation: int
    tag: int
    properties: BasicProperties


def received(
    handler: Handler[...],
    generation: int,
    method: Basic.Deliver,
    properties: BasicProperties,
    body: bytes,
) -> Job:
    """The job for a delivery of ``handler``'s queue on connection ``generation``."""
    undecodable = lenient_frames.undecodable(properties)
    delivery = Delivery.received(
        body=body,
        exchange=method.exchange,
        routing_key=method.routing_key,
        redelivered=bool(method.redelivered),
        queue=handler.queue,
        message_id=properties.message_id,
        content_type=properties.content_type,
        headers=properties.headers,
        timestamp=properties.timestamp,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        priority=properties.priority,
        type=properties.type,
        app_id=properties.app_id,
        content_encoding=properties.content_encoding,
        expiration=properties.expiration,
        user_id=properties.user_id,
        undecodable=undecodable.reason() if undecodable else None,
        raw_properties=undecodable.raw if undecodable else None,
    )
    return Job(delivery, handler, DeliveryToken(generation, method.delivery_tag, properties))


def settle(
    result: Result,
    channel: BlockingChannel | None,
    publisher: BlockingChannel | None,
    *,
    frame_max: int,
    database: DatabaseWatch,
    gate: FlowGate,
    observer: ConsumerObserver,
    log: structlog.typing.FilteringBoundLogger,
) -> None:
    """Settle ``result``'s delivery on the channel it came on (``publisher``: the same
    connection's confirm-mode channel), then report and log it. ``channel`` None: that
    connection is gone (the broker has requeued the delivery) and the result is dropped."""
    job = result.job
    fields = {
        "queue": job.handler.queue,
        "message_id": job.delivery.message_id,
        "attempt": result.attempt,
        "duration_ms": round(result.duration_s * 1000, 2),
    }
    if channel is None or publisher is None:
        log.info("consumer.result_dropped", reason="connection replaced", **fields)
        return
    outcome = _ack_or_republish(
        result, channel, publisher, frame_max=frame_max, database=database, gate=gate, log=log
    )
    observer.settled(
        queue=job.handler.queue, handler=job.handler.name, result=result, settled_as=outcome
    )
    error_fields = {}
    if result.error is not None:
        error_fields = {"error_type": result.error.type, "error": result.error.message}
    level = log.info if result.error is None else log.warning
    level("consumer.message", outcome=outcome, **fields, **error_fields)


def _ack_or_republish(
    result: Result,
    channel: BlockingChannel,
    publisher: BlockingChannel,
    *,
    frame_max: int,
    database: DatabaseWatch,
    gate: FlowGate,
    log: structlog.typing.FilteringBoundLogger,
) -> str:
    """Ack, requeue, hold or republish ``result``'s delivery; the outcome's name."""
    job = result.job
    token: DeliveryToken = job.token
    outcome: str = result.kind.value
    if result.kind in (Kind.HANDLED, Kind.DUPLICATE):
        channel.basic_ack(token.tag)
    elif result.kind is Kind.REQUEUE:  # the database was unavailable
        channel.basic_nack(token.tag, requeue=True)
        database.pause(result.error.message if result.error else "database unavailable")
    elif result.kind is Kind.PAUSED:  # RateLimited: held, unacked, until the pause ends
        again = Job(job.delivery, job.handler, job.token)
        gate.pause(job.handler, result.requested_delay_s or 0.0, again=again)
    elif result.kind is Kind.BUSY:  # the database answers: nothing to pause
        channel.basic_nack(token.tag, requeue=True)
        outcome = Kind.REQUEUE.value
    else:
        outcome = republish(publisher, result, token.properties, frame_max=frame_max, log=log)
        if outcome == Kind.REQUEUE.value:
            channel.basic_nack(token.tag, requeue=True)
        else:
            channel.basic_ack(token.tag)
    return outcome


def republish(
    publisher: BlockingChannel,
    result: Result,
    properties: BasicProperties,
    *,
    frame_max: int,
    log: structlog.typing.FilteringBoundLogger,
) -> str:
    """Publish a failed message to its next queue with confirms; the outcome's name
    (``requeue`` when the broker refused it: the delivery goes back to its queue)."""
    job, error = result.job, result.error
    assert error is not None  # noqa: S101 - failures always carry their error
    target = destination(
        job.handler.route,
        attempt=result.attempt,
        reject=result.kind is Kind.PARK,
        requested_delay_s=result.requested_delay_s,
    )
    headers = failure_headers(
        job.delivery.headers,
        attempt=result.attempt,
        error=error,
        failed_queue=job.handler.queue,
        routing_key=original_routing_key(job.delivery),
        exchange=original_exchange(job.delivery),
        raw_properties=job.delivery.raw_properties,
    )
    try:
        publisher.basic_publish(
            "",
            target.queue,
            job.delivery.body,
            properties=fitted(properties, headers, frame_max=frame_max),
            mandatory=True,
        )
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
        log.error(  # noqa: TRY400 - a refusal, not a failure: no traceback to show
            "consumer.republish_refused",
            queue=job.handler.queue,
            target=target.queue,
            message_id=job.delivery.message_id,
            error=repr(exc),
        )
        return Kind.REQUEUE.value
    return Kind.PARK.value if target.parked else Kind.RETRY.value


def fitted(
    original: BasicProperties, headers: dict[str, Any], *, frame_max: int
) -> BasicProperties:
    """:func:`republished`, its headers cut to fit one content-header frame of
    ``frame_max`` bytes (a larger one makes the broker close the connection)."""

    def size_of(candidate: dict[str, Any]) -> int:
        return len(b"".join(republished(original, candidate).encode()))  # type: ignore[no-untyped-call]

    limit = frame_max - lenient_frames.FRAME_OVERHEAD
    try:
        return republished(original, fit_headers(headers, size_of=size_of, limit=limit))
    except (struct.error, pika.exceptions.AMQPError, TypeError, ValueError):
        # A value failure_headers did not make encodable: keep only our own headers.
        ours = {k: v for k, v in headers.items() if isinstance(k, str) and k.startswith("outbox-")}
        ours[DROPPED_HEADERS_HEADER] = [str(k) for k in headers if k not in ours]
        return republished(original, fit_headers(ours, size_of=size_of, limit=limit))


def republished(original: BasicProperties, headers: dict[str, Any]) -> BasicProperties:
    """The original properties with our headers. ``expiration`` is dropped (it would fight
    the tier's TTL) and ``user_id`` too (the broker checks it against our login)."""
    return BasicProperties(  # type: ignore[no-untyped-call]  # pika leaves __init__ untyped
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=PERSISTENT,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        type=original.type,
        app_id=original.app_id,
    )
