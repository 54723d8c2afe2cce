"""When the relay claims, and how long it sleeps in between. Pure: time is passed in.

Every timer and every reason to wake is here as data, so the loop only carries the
planner's answers to the store and the publisher:

- the **backstop poll** (:attr:`Timer.POLL`): NOTIFY is only a hint. The first poll
  comes ``poll_interval_s`` after the last claim; each poll that finds nothing doubles
  the interval up to IDLE_POLL_MAX_S, so an idle relay costs a transaction every few
  seconds instead of two a second;
- the **lease heartbeat** (:attr:`Timer.HEARTBEAT`), every ``heartbeat_interval_s``. A
  sleep that ends for it alone claims nothing: the loop heartbeats and sleeps on until
  the poll, unless the heartbeat took a partition (its rows are claimed at once);
- the **next scheduled row** (:attr:`Timer.DUE`): a delayed or retried row, whose time
  the store reports when the flag moves or when asked (:attr:`AfterBatches.read_due`);
- the **late looks** (:attr:`Timer.LOOK`): after raising the wake-up flag the relay
  claims every BUSY_POLL_S for LATE_LOOK_S, for producers that still trusted the flag
  down (:class:`~outbox_relay.relay.wakeup.FlagSeen`).

The wake-up flag itself follows the load (:class:`~outbox_relay.relay.wakeup.WakeUp`).
The final check after raising the flag sees every row committed before the flag was
visible; the late looks see the rows of producers that still trusted it down; NOTIFY
reports every row whose insert saw the flag. What is left is a transaction that
inserted without a NOTIFY before the last of those looks and committed after it, and
rows of writers that skip the wake-up: the backstop poll finds those. This relies on
the LISTEN connection being healthy: when it dies its socket becomes readable, the wait
ends (:attr:`Wake.READABLE`), and reading the notifications raises.

A round goes: :meth:`SleepPlanner.claiming`, the batches, :meth:`~SleepPlanner.after_batches`
(then :meth:`~SleepPlanner.flag_moved` or :meth:`~SleepPlanner.due_in` with the store's
answer), and when it says so a sleep: :meth:`~SleepPlanner.next_wait`, the wait,
:meth:`~SleepPlanner.woke` and, when the socket was readable, :meth:`~SleepPlanner.heard`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from outbox_relay.relay.settings import IDLE_POLL_MAX_S
from outbox_relay.relay.wakeup import BUSY_POLL_S, LATE_LOOK_S, Notices, Step, WakeUp

# Empty polls counted at most (the interval stops doubling long before).
MAX_EMPTY_POLLS = 16


class Timer(enum.Enum):
    """What a sleep waits for, when no NOTIFY comes first."""

    POLL = "poll"
    HEARTBEAT = "heartbeat"
    DUE = "due"
    LOOK = "look"


class Wake(enum.Enum):
    """Why a sleep ended."""

    READABLE = "readable"  # the LISTEN socket: a NOTIFY, or the connection died
    TIMEOUT = "timeout"  # one of the timers


class FlagMove(enum.Enum):
    """A change of the wake-up flag the loop asks the store for (``set_waiting``)."""

    RAISE = "raise"  # up, then claim once more (the final check) and look a while
    LOWER = "lower"  # down: producers are busy; claim again
    REFRESH = "refresh"  # up again, only to learn when the next scheduled row is due


@dataclass(frozen=True)
class Wait:
    """How long to sleep, and for which timer when nothing wakes the relay first."""

    timeout_s: float
    timer: Timer


@dataclass(frozen=True)
class AfterBatches:
    """What to do after a round of batches, in this order."""

    flag: FlagMove | None = None  # set_waiting(...), then flag_moved(...)
    read_due: bool = False  # next_due_in(), then due_in(...)
    pause_s: float = 0.0  # wait this long (flag down, nothing found), then claim
    sleep: bool = False  # sleep before claiming again; otherwise claim at once
    unannounced: bool = False  # the backstop poll found rows no NOTIFY announced


class SleepPlanner:
    """The relay's timers and wake-up state; every method takes the monotonic time."""

    def __init__(
        self, *, poll_interval_s: float, heartbeat_interval_s: float, batch_size: int
    ) -> None:
        self._poll_s = poll_interval_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._wakeup = WakeUp(batch_size=batch_size)
        self._heartbeat_at = 0.0  # the next heartbeat
        self._poll_at: float | None = None  # the next backstop poll
        self._empty_polls = 0
        self._due_at: float | None = None  # when the next scheduled row is due
        # That row is due, or a delayed row was announced: read when the next one is due.
        self._due_unknown = False
        self._look_until: float | None = None  # late looks after raising the flag
        self._notified = False  # the last sleep ended with a NOTIFY
        self._polled = False  # the last sleep ended at the backstop poll
        self._heartbeat_only = False  # ... or for the heartbeat alone
        self._for_heartbeat = False  # the current sleep ends at the heartbeat, not the poll
        self._claim_notified = False  # of the round being claimed
        self._claim_polled = False

    @property
    def flag_up(self) -> bool:
        """Whether the wake-up flag is up: the relay waits for NOTIFY."""
        return self._wakeup.waiting

    # -- connections and heartbeats ------------------------------------------------------

    def connected(self, *, store: bool) -> None:
        """Connected again (``store``: the database too, whose session held the flag)."""
        if store:
            self._wakeup.flag_lost()
            self._heartbeat_at = 0.0
            self._poll_at = None
        # A sleep cut short by the outage must not skip the claim after reconnecting.
        self._heartbeat_only = False
        # An interrupted batch may have recorded failures (and their retry times) on its
        # way out: read when the next scheduled row is due before sleeping.
        self._due_at = None
        self._due_unknown = True
        self._look_until = None

    def heartbeat_due(self, now: float) -> bool:
        return now >= self._heartbeat_at

    def heartbeated(self, started: float) -> None:
        """A heartbeat that started at ``started`` renewed the leases."""
        self._heartbeat_at = started + self._heartbeat_interval_s

    def sleep_on(self, *, gained: bool) -> bool:
        """True when the last sleep ended for the heartbeat alone and it took no
        partition (``gained``): sleep on without claiming."""
        only = self._heartbeat_only and not gained
        self._heartbeat_only = False
        return only

    def may_claim_ahead(self, now: float) -> bool:
        """Heartbeats run between rounds of batches: claim the next batch during this one
        only while no heartbeat is due."""
        return now < self._heartbeat_at

    # -- a round of batches --------------------------------------------------------------

    def claiming(self) -> None:
        """A round of batches begins: what ended the last sleep is used up."""
        self._claim_notified, self._notified = self._notified, False
        self._claim_polled, self._polled = self._polled, False

    def after_batches(self, *, claimed: int, failed: int, held: int) -> AfterBatches:
        """The round found ``claimed`` rows (with those left in the table), ``failed`` of
        them failed and ``held`` were left in the table."""
        self._poll_at = None  # a claim is as good as a poll
        unannounced = self._claim_polled and claimed > 0
        step = self._wakeup.after_claim(claimed)
        if claimed:
            self._empty_polls = 0
        if step is Step.LOWER_FLAG:
            return AfterBatches(flag=FlagMove.LOWER, unannounced=unannounced)
        if step is Step.RAISE_FLAG:
            return AfterBatches(flag=FlagMove.RAISE, unannounced=unannounced)
        if step is Step.POLL:
            return AfterBatches(pause_s=BUSY_POLL_S, unannounced=unannounced)
        if step is Step.CLAIM:
            return AfterBatches(unannounced=unannounced)
        # Rows left in the table may be due now, and no NOTIFY will come: claim again.
        sleep = not held
        if failed:
            # Their retry is scheduled now: learn when the next row is due.
            return AfterBatches(flag=FlagMove.REFRESH, sleep=sleep, unannounced=unannounced)
        # The row slept for is due (and claimed), a delayed row was announced, or a NOTIFY
        # found nothing due (a delayed row from a writer that did not say so): learn when
        # the next one is due, or the sleep would end at once or only at the backstop.
        read_due = self._due_unknown or (self._claim_notified and not claimed)
        return AfterBatches(read_due=read_due, sleep=sleep, unannounced=unannounced)

    def flag_moved(self, now: float, move: FlagMove, due_in_s: float | None) -> None:
        """The store moved the flag as asked and said when the next row is due."""
        self.due_in(now, due_in_s)
        if move is FlagMove.LOWER:
            self._look_until = None
        elif move is FlagMove.RAISE:
            # Then look once more: a row committed before the flag was visible sent no
            # NOTIFY, but the next claim sees it. And keep looking for a little while:
            # producers that saw the flag down a moment ago send no NOTIFY yet.
            self._look_until = now + LATE_LOOK_S
            self._empty_polls = 0

    def due_in(self, now: float, seconds: float | None) -> None:
        """The next scheduled row is due in ``seconds`` (None: there is none)."""
        self._due_at = None if seconds is None else now + seconds
        self._due_unknown = False

    # -- a sleep -------------------------------------------------------------------------

    def next_wait(self, now: float) -> Wait:
        """How long to wait for a NOTIFY before a timer ends the sleep."""
        if self._poll_at is None:
            poll = self._poll_s
            backoff = min(poll * 2**self._empty_polls, max(poll, IDLE_POLL_MAX_S))
            self._poll_at = now + backoff
        poll_in = max(0.0, self._poll_at - now)
        heartbeat_in = max(0.0, self._heartbeat_at - now)
        self._for_heartbeat = heartbeat_in < poll_in
        wait = (
            Wait(heartbeat_in, Timer.HEARTBEAT)
            if self._for_heartbeat
            else Wait(poll_in, Timer.POLL)
        )
        if self._due_at is not None and self._due_at - now < wait.timeout_s:
            wait = Wait(max(0.0, self._due_at - now), Timer.DUE)
        if self._look_until is not None and wait.timeout_s > BUSY_POLL_S:
            wait = Wait(BUSY_POLL_S, Timer.LOOK)
        return wait

    def woke(self, now: float, wake: Wake) -> None:
        """The sleep planned by :meth:`next_wait` ended at ``now``."""
        timer_fired = False
        if self._due_at is not None and now >= self._due_at:
            self._due_at = None
            self._due_unknown = True  # the next claim takes it; what is due after it?
            timer_fired = True
        if self._look_until is not None:
            timer_fired = True
            if now >= self._look_until:
                self._look_until = None
        # The backstop poll or the heartbeat ended this sleep, not a NOTIFY or a timer.
        ended = wake is Wake.TIMEOUT and not timer_fired
        self._polled = ended and not self._for_heartbeat
        self._heartbeat_only = ended and self._for_heartbeat
        if self._polled:
            self._empty_polls = min(self._empty_polls + 1, MAX_EMPTY_POLLS)

    def heard(self, notices: Notices) -> None:
        """What the LISTEN session heard when the sleep ended on :attr:`Wake.READABLE`."""
        if notices.count:
            # Something was inserted: claim it at once. The flag is lowered after that
            # claim has published, off the path the new message waits on.
            self._empty_polls = 0
            self._notified = True
            self._due_unknown = self._due_unknown or notices.scheduled
