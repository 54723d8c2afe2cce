"""Where a failed message goes next and what it carries. Pure: no I/O.

After failed attempt ``n`` (1-based) a message goes to the delay tier of retry ``n``
(the last tier again when there are more retries than tiers) or, once ``n`` reaches
``max_attempts``, to the parking lot. The attempt count and the error travel in our own
headers; ``x-death`` is never read (RabbitMQ 3.13+ owns it and stops counting republished
messages in it).
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import decimal
import math
import traceback
from collections.abc import Callable, Mapping, Sequence
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
# Properties pika could not decode: base64 of the property flags and list as received
# (cut when they do not fit in a frame beside the rest), and their full size in bytes.
RAW_PROPERTIES_HEADER = "outbox-raw-properties"
RAW_PROPERTIES_SIZE_HEADER = "outbox-raw-properties-size"
# Names of the message's own headers dropped because the whole would not fit in a frame.
DROPPED_HEADERS_HEADER = "outbox-dropped-headers"
INT64 = (-(2**63), 2**63 - 1)  # what an AMQP long-long holds
DECIMAL_DIGITS = (0, 255)  # an AMQP decimal's scale octet
INT32 = (-(2**31), 2**31 - 1)  # and its value
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
    raw_properties: bytes | None = None,
) -> dict[str, Any]:
    """The original headers with the attempt count and this failure's details, every value
    in a form AMQP can carry (see :func:`wire_value`).

    ``routing_key`` and ``exchange`` are where the message was first published: a message
    that already went round a delay tier keeps the values it carried. ``raw_properties``:
    the properties pika could not decode, kept base64-encoded.
    """
    result = {key: wire_value(value) for key, value in headers.items() if key != "x-death"}
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
    if raw_properties is not None:
        result[RAW_PROPERTIES_HEADER] = base64.b64encode(raw_properties).decode("ascii")
        result[RAW_PROPERTIES_SIZE_HEADER] = len(raw_properties)
    return result


def wire_value(value: Any) -> Any:
    """``value`` as AMQP can encode it again. What pika decodes always re-encodes (floats
    as doubles, see outbox_relay.pika_doubles) except integers past 64 bits and decimals
    past the 32-bit AMQP decimal; those, and any type AMQP has no field for, travel as
    their text."""
    if isinstance(value, Mapping):
        return {key: wire_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [wire_value(item) for item in value]
    if value is None or isinstance(value, str | bytes | bool):
        fits = True
    elif isinstance(value, int):
        fits = INT64[0] <= value <= INT64[1]
    elif isinstance(value, float):
        fits = math.isfinite(value)
    elif isinstance(value, decimal.Decimal):
        fits = _fits_amqp_decimal(value)
    elif isinstance(value, dt.datetime):
        fits = calendar.timegm(value.utctimetuple()) >= 0
    else:
        fits = False
    return value if fits else str(value)


def fit_headers(
    headers: dict[str, Any], *, size_of: Callable[[dict[str, Any]], int], limit: int
) -> dict[str, Any]:
    """``headers`` cut until ``size_of`` them is at most ``limit`` (the room a frame has
    for the properties): first the raw properties, then the trace, then the message's own
    headers, largest first, their names listed in ``outbox-dropped-headers``."""
    fitted = dict(headers)
    excess = size_of(fitted) - limit
    if excess <= 0:
        return fitted
    raw_b64 = fitted.get(RAW_PROPERTIES_HEADER)
    if isinstance(raw_b64, str):
        raw = base64.b64decode(raw_b64)
        keep = max(0, len(raw) - (excess * 3 + 3) // 4 - 3)  # base64: 4 chars per 3 bytes
        fitted[RAW_PROPERTIES_HEADER] = base64.b64encode(raw[:keep]).decode("ascii")
        excess = size_of(fitted) - limit
        if excess <= 0:
            return fitted
    fitted[ERROR_TRACE_HEADER] = TRUNCATED
    excess = size_of(fitted) - limit
    own = sorted(
        (key for key in fitted if not (isinstance(key, str) and key.startswith("outbox-"))),
        key=lambda key: size_of({key: fitted[key]}),
        reverse=True,
    )
    dropped: list[str] = []
    for key in own:
        if excess <= 0:
            break
        del fitted[key]
        dropped.append(key if isinstance(key, str) else repr(key))
        fitted[DROPPED_HEADERS_HEADER] = dropped
        excess = size_of(fitted) - limit
    return fitted


def _fits_amqp_decimal(value: decimal.Decimal) -> bool:
    if not value.is_finite():
        return False
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # noqa: S101 - finite decimals have an int exponent
    scale = max(0, -exponent)
    raw = int(value.scaleb(scale))
    return DECIMAL_DIGITS[0] <= scale <= DECIMAL_DIGITS[1] and INT32[0] <= raw <= INT32[1]


def truncate_head(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def truncate_tail(text: str, limit: int = MAX_TRACE_CHARS) -> str:
    return text if len(text) <= limit else TRUNCATED + text[len(text) - limit + len(TRUNCATED) :]
