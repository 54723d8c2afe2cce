"""The one reconnect policy of the relay and the consumer: backoff with full jitter while a
service is unavailable, until asked to stop, starting again from its base after every
successful connection."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception

RECONNECT_BASE_S = 0.5
RECONNECT_MAX_S = 30.0
# The longest wait between tries, as a fraction of how long the outage has lasted.
OUTAGE_FRACTION = 0.5


class ReconnectBackoff:
    """How long to wait before the next try to connect.

    Each wait is a random time ("full jitter") up to a ceiling: ``base_s`` at the start
    of an outage, then half of how long the outage has lasted, up to ``max_s``. So the
    tries come further and further apart (the gaps grow geometrically, as with
    exponential backoff: a 30 s outage costs about twenty tries), yet the service, once
    back, waits at most half its outage for the next try: back after 2 s, connected
    within a second. :meth:`connected` ends the outage, so the next one starts again
    from the base, however many came before (one policy for the life of the process
    made the tenth outage wait as long as the tenth try of one).

    ``random_unit`` (a number in [0, 1]) and ``clock`` (monotonic seconds) are passed in
    so the policy can be tested without waiting.
    """

    def __init__(
        self,
        *,
        base_s: float = RECONNECT_BASE_S,
        max_s: float = RECONNECT_MAX_S,
        random_unit: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_s = base_s
        self._max_s = max(max_s, base_s)
        self._random_unit = random_unit
        self._clock = clock
        self._outage_since: float | None = None

    def connected(self) -> None:
        """A connection succeeded: the outage is over."""
        self._outage_since = None

    def next_wait_s(self) -> float:
        """A try failed: the seconds to wait before the next one."""
        now = self._clock()
        if self._outage_since is None:
            self._outage_since = now
        lasted_s = now - self._outage_since
        ceiling = min(self._max_s, max(self._base_s, lasted_s * OUTAGE_FRACTION))
        return self._random_unit() * ceiling

    def __call__(self, _state: RetryCallState) -> float:
        """tenacity's wait strategy."""
        return self.next_wait_s()


def reconnecting(
    *,
    unavailable: tuple[type[BaseException], ...],
    should_stop: Callable[[], bool],
    sleep: Callable[[float], object],
    on_outage: Callable[[RetryCallState], None],
    backoff: ReconnectBackoff,
    reraise: bool = False,
    fatal: Callable[[BaseException], bool] = lambda _error: False,
) -> Retrying:
    """Retry on ``unavailable`` errors, waiting as ``backoff`` says (the caller tells it
    when a connection succeeded) with ``sleep`` (which should return early once
    stopping); retrying ends once ``should_stop()``. ``on_outage`` runs before each
    wait (log once per outage there, not per try). An error for which ``fatal`` says
    True is raised at once instead (a misconfiguration found at start)."""

    def pause(seconds: float) -> None:
        sleep(seconds)  # Event.wait returns a bool; tenacity wants None

    return Retrying(
        retry=retry_if_exception(lambda error: isinstance(error, unavailable) and not fatal(error)),
        wait=backoff,
        stop=lambda _state: should_stop(),
        sleep=pause,
        before_sleep=on_outage,
        reraise=reraise,
    )
