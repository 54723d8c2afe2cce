"""Finding the row the broker refused among several unconfirmed ones.

When the broker closes the channel or the connection over a message without saying
which (a 501 FRAME_ERROR names no message), every message it had not confirmed is a
suspect. Sending them all again would be refused again, and again: one bad row would
stop every other. So the relay sends fewer rows at a time, half as many as there were
suspects (ISOLATION_MAX_ROWS at most), and halves again each time the broker refuses:
the row that causes the refusal ends up alone in a send, and the publisher fails it
alone. The search ends, and whole batches go again, once a row is blamed or every
suspect has been confirmed or failed.

Each refused send costs a new connection, and its rows before the culprit were
probably delivered though never confirmed: they go again (at-least-once). Small sends
bound those duplicates: all the unconfirmed rows of the first refusal, then fewer than
2 * ISOLATION_MAX_ROWS in all; the price is more sends (one per ISOLATION_MAX_ROWS
suspects), for a rare event.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from outbox_relay.relay.outcome import Outcome, Reason, Status

ISOLATION_MAX_ROWS = 16

# Reasons of a row blamed for a close of the channel or the connection.
_CLOSES = frozenset({Reason.BROKER_REFUSED, Reason.CHANNEL_CLOSED, Reason.TOO_LARGE})


class Isolation:
    """The search for a refused row: the suspects, and the most rows a send may carry
    while they are looked through (``limit``; None when there is no search)."""

    def __init__(self) -> None:
        self._suspects: set[int] = set()
        self.limit: int | None = None

    def claimed(self, row_ids: Collection[int]) -> None:
        """A new claim: the search ends when it holds no suspect (another relay took
        them, or they were deleted or retried), as the suspects cannot be looked at."""
        if self._suspects and self._suspects.isdisjoint(row_ids):
            self._end()

    def sent(self, outcomes: Mapping[int, Outcome]) -> None:
        """Learn from the outcomes of one send (row id -> outcome)."""
        suspects = {row_id for row_id, outcome in outcomes.items() if outcome.suspected}
        if len(suspects) > 1:
            # With two batches out, one close makes suspects of both: keep them all.
            self._suspects |= suspects
            halved = min((len(suspects) + 1) // 2, ISOLATION_MAX_ROWS)
            self.limit = halved if self.limit is None else min(self.limit, halved)
            return
        if any(o.status is Status.FAILED and o.reason in _CLOSES for o in outcomes.values()):
            self._end()
            return
        self._suspects -= {
            row_id for row_id, outcome in outcomes.items() if outcome.status is not Status.UNSENT
        }
        if not self._suspects:
            self._end()

    def _end(self) -> None:
        self._suspects.clear()
        self.limit = None
