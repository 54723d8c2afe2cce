"""The one reconnect policy of the relay and the consumer: exponential backoff with full
jitter while a service is unavailable, until asked to stop."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

RECONNECT_MULTIPLIER_S = 0.5
RECONNECT_MAX_S = 30.0


def reconnecting(
    *,
    unavailable: tuple[type[BaseException], ...],
    stopping: threading.Event,
    on_outage: Callable[[RetryCallState], None],
    max_s: float = RECONNECT_MAX_S,
    reraise: bool = False,
) -> Retrying:
    """Retry on ``unavailable`` errors, waiting up to ``max_s`` between tries; the wait
    ends early, and retrying stops, once ``stopping`` is set. ``on_outage`` runs before
    each wait (log once per outage there, not per try)."""
    return Retrying(
        retry=retry_if_exception_type(unavailable),
        wait=wait_random_exponential(multiplier=RECONNECT_MULTIPLIER_S, max=max_s),
        stop=lambda _state: stopping.is_set(),
        sleep=stopping.wait,  # type: ignore[arg-type]  # returns a bool tenacity ignores
        before_sleep=on_outage,
        reraise=reraise,
    )
