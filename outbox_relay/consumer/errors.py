"""What a handler raises to steer its message, and the errors the SDK reports.

:class:`Retry` and :class:`Reject` are control flow, not failures of the SDK: they sit
outside :class:`~outbox_relay.errors.OutboxRelayError` so that ``except OutboxRelayError``
in a handler cannot swallow them by accident.
"""

from __future__ import annotations

import math


class Retry(Exception):  # noqa: N818 - named for what the handler asks, like Dramatiq's Retry
    """Raise in a handler to roll back and try the message again later.

    ``delay`` (seconds) picks the shortest retry tier at least that long (the longest tier
    when none is); None takes the tier of the current attempt. The attempt counts towards
    ``max_attempts``: past it the message is parked like any other failure.
    """

    def __init__(
        self, reason: str = "retry requested by the handler", *, delay: float | None = None
    ):
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Reject(Exception):  # noqa: N818 - named for what the handler asks
    """Raise in a handler to roll back and park the message at once, with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateLimited(Exception):  # noqa: N818 - named for what the outside world said
    """Raise in a handler when the service it calls says "slow down" (HTTP 429): the
    transaction rolls back, the message goes back unprocessed **without counting an
    attempt**, and the handler pauses for ``retry_after`` seconds in every process of the
    app (through the database, see ``rate_limit=``), then resumes with this message.

    ``retry_after`` must be a finite number of seconds above 0: anything else raises
    ValueError here, so the handler fails with that error like any other (retried, the
    attempt counted). Pauses are capped at 10 minutes (``rate_limit.MAX_PAUSE_S``), since held
    deliveries stay unacked meanwhile (RabbitMQ's consumer_timeout is 30 minutes).
    """

    def __init__(self, retry_after: float, reason: str = "the handler was rate limited") -> None:
        self._retry_after = pause_seconds(retry_after)
        super().__init__(f"{reason} (retry after {self._retry_after:g} s)")
        self.reason = reason

    @property
    def retry_after(self) -> float:
        """The pause in seconds, checked when the exception was made (read-only, so the
        consumer can use it as it is)."""
        return self._retry_after


def pause_seconds(retry_after: float) -> float:
    """``retry_after`` of a :class:`RateLimited` as seconds; ValueError naming the value
    and the fix unless it is a finite number above 0 (NaN would pause the handler for
    ever: the database orders NaN after every time)."""
    try:
        seconds = float(retry_after)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(retry_after, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(
            f"RateLimited(retry_after={retry_after!r}): retry_after must be a finite number "
            "of seconds above 0, e.g. the Retry-After the service sent (use max(value, 1) "
            "when it may send 0, and raise Retry to try the message again without pausing "
            "the handler); pauses longer than 10 minutes are cut to 10 minutes"
        )
    return seconds


class HandlerTimeoutError(Exception):
    """Recorded (never raised into the handler) when a handler ran past its timeout."""


class HandlerCancelledError(Exception):
    """Recorded when an async handler's own code cancelled it (``asyncio.CancelledError``
    reached the SDK, not at the handler's timeout): retried like any failure."""


class UndecodableMessageError(Exception):
    """Recorded when a body cannot be decoded or the message lacks what the handler needs."""


class InvalidPayloadError(UndecodableMessageError):
    """Recorded when a body does not fit a handler's payload type: parked at once, with
    the validation error, never retried."""
