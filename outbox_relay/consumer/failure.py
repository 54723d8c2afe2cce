"""Where a failed message goes next and what it carries. Pure: no I/O.

After failed attempt ``n`` (1-based) a message goes to the delay tier of retry ``n``
(the last tier again when there are more retries than tiers) or, once ``n`` reaches
``max_attempts``, to the parking lot. The attempt count and the error travel in our own
headers; ``x-death`` is never read (RabbitMQ 3.13+ owns it and stops counting republished
messages in it).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from outbox_relay.consumer.message import (
    ATTEMPT_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
)

ERROR_TYPE_HEADER = "outbox-error-type"
ERROR_MESSAGE_HEADER = "outbox-error-message"
ERROR_TRACE_HEADER = "outbox-error-trace"
FAILED_QUEUE_HEADER = "outbox-failed-queue"
MAX_ERROR_MESSAGE_CHARS = 1_000
MAX_TRACE_CHARS = 4_000  # the tail is kept: the innermost frames say the most
TRUNCATED = "...[truncated]..."


@dataclass(frozen=True)
class RetryRoute:
    """A handler's queue, its delay tiers (queue, delay in seconds) and its parking lot."""

    queue: str
    tiers: tuple[tuple[str, float], ...]
    parking: str
    max_attempts: int


@dataclass(frozen=True)
class ErrorInfo:
    """What went wrong, ready for headers and logs."""

    type: str
    message: str
    trace: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        # Each line capped first, so one huge message cannot push every frame out.
        lines = traceback.format_exception(kind, exc, exc.__traceback__)
        trace = "".join(truncate_head(line.rstrip("\n")) + "\n" for line in lines)
        return cls(type=name, message=truncate_head(str(exc)), trace=truncate_tail(trace))


@dataclass(frozen=True)
class Destination:
    """The queue to republish to (through the default exchange)."""

    queue: str
    parked: bool
    delay_s: float | None = None


def destination(
    route: RetryRoute,
    *,
    attempt: int,
    reject: bool = False,
    requested_delay_s: float | None = None,
) -> Destination:
    """Where the message goes after failed ``attempt``: a delay tier or the parking lot."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if reject or attempt >= route.max_attempts or not route.tiers:
        return Destination(queue=route.parking, parked=True)
    if requested_delay_s is not None:
        name, delay = tier_for_delay(route.tiers, requested_delay_s)
    else:
        name, delay = route.tiers[min(attempt, len(route.tiers)) - 1]
    return Destination(queue=name, parked=False, delay_s=delay)


def tier_for_delay(tiers: Sequence[tuple[str, float]], requested_s: float) -> tuple[str, float]:
    """The shortest tier at least ``requested_s`` long, else the longest tier."""
    longer = [tier for tier in tiers if tier[1] >= requested_s]
    if longer:
        return min(longer, key=lambda tier: tier[1])
    return max(tiers, key=lambda tier: tier[1])


def failure_headers(
    headers: Mapping[str, Any],
    *,
    attempt: int,
    error: ErrorInfo,
    failed_queue: str,
    routing_key: str,
    exchange: str,
) -> dict[str, Any]:
    """The original headers with the attempt count and this failure's details.

    ``routing_key`` and ``exchange`` are where the message was first published: a message
    that already went round a delay tier keeps the values it carried.
    """
    result = {key: value for key, value in headers.items() if key != "x-death"}
    result.update(
        {
            ATTEMPT_HEADER: attempt,
            ERROR_TYPE_HEADER: error.type,
            ERROR_MESSAGE_HEADER: error.message,
            ERROR_TRACE_HEADER: error.trace,
            FAILED_QUEUE_HEADER: failed_queue,
            ORIGINAL_ROUTING_KEY_HEADER: routing_key,
            ORIGINAL_EXCHANGE_HEADER: exchange,
        }
    )
    return result


def truncate_head(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def truncate_tail(text: str, limit: int = MAX_TRACE_CHARS) -> str:
    return text if len(text) <= limit else TRUNCATED + text[len(text) - limit + len(TRUNCATED) :]
