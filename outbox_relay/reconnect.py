"""The one reconnect policy of the relay and the consumer: exponential backoff with full
jitter while a service is unavailable, until asked to stop."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

RECONNECT_MULTIPLIER_S = 0.5
RECONNECT_MAX_S = 30.0


def reconnecting(
    *,
    unavailable: tuple[type[BaseException], ...],
    should_stop: Callable[[], bool],
    sleep: Callable[[float], object],
    on_outage: Callable[[RetryCallState], None],
    max_s: float = RECONNECT_MAX_S,
    reraise: bool = False,
) -> Retrying:
    """Retry on ``unavailable`` errors, waiting up to ``max_s`` between tries with
    ``sleep`` (which should return early once stopping); retrying ends once
    ``should_stop()``. ``on_outage`` runs before each wait (log once per outage there,
    not per try)."""

    def pause(seconds: float) -> None:
        sleep(seconds)  # Event.wait returns a bool; tenacity wants None

    return Retrying(
        retry=retry_if_exception_type(unavailable),
        wait=wait_random_exponential(multiplier=RECONNECT_MULTIPLIER_S, max=max_s),
        stop=lambda _state: should_stop(),
        sleep=pause,
        before_sleep=on_outage,
        reraise=reraise,
    )
