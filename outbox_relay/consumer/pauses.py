"""What one consumer process knows of its handlers' pauses (a handler that raised
:class:`~outbox_relay.consumer.errors.RateLimited` is paused in every process of the app).

A pause starts here at once, and goes to ``<schema>.consumer_flow`` for the other
processes, which learn it with their next lease, or (handlers without a limit) before
they start a delivery once what they know is older than ``PAUSE_CHECK_S``. While
deliveries flow the gate thread refreshes that view ``PAUSE_REFRESH_AHEAD_S`` before it
goes stale, so they do not wait for it: at most about one round trip a second, and only
while deliveries flow (the first deliveries after start or an idle spell wait for one).
The gate (:mod:`~outbox_relay.consumer.gate`) does the round trips; this is its
bookkeeping, used under its lock.
"""

from __future__ import annotations

import time

import structlog

from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.observer import FlowObserver
from outbox_relay.consumer.rate_limit import pause_s

log = structlog.get_logger("outbox_relay.consumer")
PAUSE_CHECK_S = 1.0  # how stale a process's view of other processes' pauses may be
PAUSE_REFRESH_AHEAD_S = 0.25  # while deliveries flow, refreshed this long before then


class Pauses:
    """Each handler's pause (by inbox key), the pauses still to record in the database,
    and how fresh this process's view of the other processes' pauses is. ``shared``:
    pauses go through the database (False without a store, or before it is migrated)."""

    def __init__(self, *, shared: bool, observer: FlowObserver | None) -> None:
        self.shared = shared
        self._observer = observer
        self._until: dict[str, float] = {}  # inbox key -> monotonic end
        self._to_record: dict[str, float] = {}  # inbox key -> seconds
        # Until when this process's view of other processes' pauses is fresh enough to
        # start a delivery of a handler without a limit (its leases tell a limited one).
        self._fresh_until = 0.0
        self.flowing = False  # deliveries went by since the last check: refresh ahead

    @property
    def none(self) -> bool:
        """No handler is paused here (read without the lock, on the fast path)."""
        return not self._until

    def fresh(self, now: float | None = None) -> bool:
        """A delivery of a handler without a limit may start without asking the database
        about pauses (asked within PAUSE_CHECK_S, or no pauses in the database)."""
        if not self.shared:
            return True
        return (time.monotonic() if now is None else now) < self._fresh_until

    def checked(self, now: float) -> None:
        """The database was asked about pauses at ``now``."""
        self._fresh_until = now + PAUSE_CHECK_S

    def refresh_due(self, now: float, *, idle_s: float) -> tuple[bool, float]:
        """Whether to ask the database about pauses now, else in how many seconds to look
        again (``idle_s`` when nothing is due). Refreshed before the view goes stale while
        deliveries flow, so they never wait for it."""
        if not self.shared:
            return False, idle_s
        ahead_at = self._fresh_until - PAUSE_REFRESH_AHEAD_S
        if now < ahead_at:
            return False, ahead_at - now
        return self.flowing, idle_s

    def left_s(self, handler: Handler[...], now: float) -> float:
        """How long ``handler`` stays paused (0 or less: not paused)."""
        return self._until.get(handler.inbox_key, 0.0) - now

    def is_paused(self, handler: Handler[...], now: float) -> bool:
        until = self._until.get(handler.inbox_key)
        if until is None:
            return False
        if until > now:
            return True
        del self._until[handler.inbox_key]
        return False

    def end_expired(self, now: float) -> None:
        for key, until in list(self._until.items()):
            if until <= now:
                del self._until[key]  # the fast path is open again

    def extend(self, handler: Handler[...], seconds: float) -> bool:
        """``handler`` is paused for ``seconds`` from now, unless already for longer;
        whether that started or lengthened its pause."""
        now = time.monotonic()
        key = handler.inbox_key
        until = now + pause_s(seconds)
        before = max(self._until.get(key, now), now)
        if until <= before:
            return False
        self._until[key] = until
        if self._observer is not None:
            self._observer.paused_for(
                queue=handler.queue, handler=handler.name, seconds=until - before
            )
        log.info("consumer.handler_paused", handler=handler.name, seconds=round(until - now, 1))
        return True

    def to_record(self, handler: Handler[...], seconds: float) -> None:
        """Record ``handler``'s pause in the database too, for the other processes (a
        pause of ``seconds`` as :func:`~outbox_relay.consumer.rate_limit.pause_s` keeps
        it; none when that is 0)."""
        if self.shared and seconds > 0:
            key = handler.inbox_key
            self._to_record[key] = max(self._to_record.get(key, 0.0), seconds)

    def take_to_record(self) -> dict[str, float]:
        """The pauses to record (inbox key -> seconds), taken."""
        pauses, self._to_record = self._to_record, {}
        return pauses
