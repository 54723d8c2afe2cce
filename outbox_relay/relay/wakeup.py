"""When a relay asks producers for a NOTIFY, and when it looks for new rows by itself. Pure.

A producer whose insert sees the relay's wake-up flag raised sends a NOTIFY, and NOTIFY
serialises committers (DESIGN.md, "Wake-up"). At a few messages a second that costs
nothing and wakes the relay within a millisecond; under load it halves producer
throughput. So the flag follows the load:

- Flag up (the relay waits for NOTIFY): a claim that finds only a few rows leaves it up
  and the relay sleeps again; the next insert wakes it. A claim that finds more than a
  few rows means producers are busy: the relay lowers the flag and claims again.
- Flag down (the relay polls): it claims again at once while claims come back full
  enough, and every ``poll_s`` while they come back empty or small. Only after
  ``quiet_claims`` such claims in a row does it raise the flag again.

Without this hysteresis a relay that keeps up with busy producers empties the table on
every claim, raises the flag, and has producers notify for every commit until its next
claim (measured: producers at 0.46 x the same transaction without an outbox row).

Producers read the flag in their insert statement (``outbox_wake()``), and even reading
it costs them: so a producer that saw the flag down trusts that for
``FLAG_TRUST_S`` (:class:`FlagSeen`) and sends bare inserts meanwhile. A row inserted in
that window after the relay raised its flag sends no NOTIFY; the relay therefore keeps
claiming every ``BUSY_POLL_S`` for ``LATE_LOOK_S`` after raising it, while it also
listens (one late look after 50 ms cost such rows up to 50 ms: p99 latency at 1k msg/s
went from 7 to 10 ms).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

# A claim of at least this many rows means producers are busy (at the relay's cycle of
# one to two milliseconds, a few thousand messages a second).
BUSY_CLAIM_ROWS = 4
# While polling, the pause after a claim that found nothing.
BUSY_POLL_S = 0.001
# Small or empty claims in a row, while polling, before the relay raises the flag.
QUIET_CLAIMS = 8
# How long a producer that saw the flag down sends inserts without looking at it. A look
# added about 43 us of database CPU to a 200 us transaction (8 pgbench clients); at 10 ms,
# a process running 500 transactions a second looked in one of five (at 50 ms, producers
# beside a working relay ran at 1.036 x the rate of 10 ms, medians of eight rounds).
FLAG_TRUST_S = 0.050
# After raising its flag, the relay keeps claiming every BUSY_POLL_S for this long: rows
# inserted by producers that still trusted the flag down have committed by then (10 ms
# after their trust ran out), unless their transaction ran on for longer (the backstop
# poll finds those).
LATE_LOOK_S = FLAG_TRUST_S + 0.010


# The NOTIFY payload of an insert that holds a delayed row: the relay reads when it is due.
SCHEDULED = "scheduled"


@dataclass(frozen=True)
class Notices:
    """What the relay's LISTEN session heard since it last looked."""

    count: int
    scheduled: bool  # one of them announced a delayed row


class Step(enum.Enum):
    CLAIM = "claim"  # claim again at once
    POLL = "poll"  # pause BUSY_POLL_S with the flag down, then claim
    LOWER_FLAG = "lower_flag"  # lower the flag, then claim again
    RAISE_FLAG = "raise_flag"  # raise the flag, then claim once more (the final check)
    SLEEP = "sleep"  # wait for a NOTIFY, the next scheduled row or the backstop poll


@dataclass
class WakeUp:
    """Decides the relay's next step from the size of each claim."""

    batch_size: int
    busy_claim_rows: int = BUSY_CLAIM_ROWS
    quiet_claims: int = QUIET_CLAIMS
    waiting: bool = False  # whether the flag is up
    _quiet: int = field(default=0, init=False, repr=False)  # small claims in a row

    def after_claim(self, claimed: int) -> Step:
        """The next step after a claim that found ``claimed`` rows. A step that moves the
        flag is taken as done; when the store fails instead, its reconnect calls
        :meth:`flag_lost`."""
        busy = claimed >= min(self.busy_claim_rows, self.batch_size)
        if self.waiting:
            if busy:
                self.waiting = False
                self._quiet = 0
                return Step.LOWER_FLAG
            return Step.SLEEP
        if busy:
            self._quiet = 0
            return Step.CLAIM
        self._quiet += 1
        if self._quiet >= self.quiet_claims:
            self.waiting = True
            self._quiet = 0
            return Step.RAISE_FLAG
        return Step.CLAIM if claimed else Step.POLL

    def flag_lost(self) -> None:
        """The flag's session is gone (a reconnect): it is down, start over polling."""
        self.waiting = False
        self._quiet = 0


class FlagSeen:
    """What producers of one process last saw of the wake-up flag, per database and schema.

    ``must_look`` is true unless the flag was seen down less than ``trust_s`` ago, timed
    from when the look was sent: while it may be up, every insert looks (and notifies).
    An older look that completes after a newer one changes nothing.
    """

    def __init__(
        self, *, trust_s: float = FLAG_TRUST_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._trust_s = trust_s
        self.clock = clock
        self._seen: dict[Hashable, tuple[float, bool]] = {}  # key: (looked at, may wait)

    def must_look(self, key: Hashable) -> bool:
        seen = self._seen.get(key)
        return seen is None or seen[1] or self.clock() >= seen[0] + self._trust_s

    def saw(self, key: Hashable, *, relay_may_wait: bool, looked_at: float) -> None:
        seen = self._seen.get(key)
        if seen is None or looked_at >= seen[0]:
            self._seen[key] = (looked_at, relay_may_wait)
