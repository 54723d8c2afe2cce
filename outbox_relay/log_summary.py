"""Repeated per-row events logged as one line per cause and target per interval.

A missing exchange fails every row sent to it: 3,000 rows made 3,000 warnings in under a
second, which drowned everything else. :class:`RepeatedEvents` lets the first event of a
kind (an event name and a key, e.g. the reason and the exchange) through at once, counts
the ones that follow, and reports the count once per interval for as long as they keep
coming: ``{"repeated": 2999, "over_s": 10.0, ...}`` with the fields of the last one.

Pure: the caller logs the lines it returns, and passes the clock in (tests use a fake).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

SUMMARY_INTERVAL_S = 10.0

Line = tuple[str, dict[str, Any]]


@dataclass
class _Window:
    started: float
    count: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class RepeatedEvents:
    """Aggregates events by (event name, key); see the module's docstring."""

    def __init__(
        self,
        *,
        interval_s: float = SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._windows: dict[tuple[str, Hashable], _Window] = {}

    def record(self, event: str, key: Hashable, **fields: Any) -> list[Line]:
        """Note one event; the lines to log now (the event itself when it is the first of
        its kind in an interval, and summaries of the intervals that ended)."""
        lines = self.due()
        window = self._windows.get((event, key))
        if window is None:
            self._windows[(event, key)] = _Window(started=self._clock())
            lines.append((event, dict(fields)))
        else:
            window.count += 1
            window.last = fields
        return lines

    def due(self) -> list[Line]:
        """Summaries of the intervals that ended: one line per kind that repeated, with
        the count; a kind that did not repeat is forgotten, so its next event is logged
        at once.

        Windows are kept in the order they started (a window that starts again moves to
        the end), so this looks only at the ones that ended and the first that did not:
        cheap enough to run at every event, however many kinds are open."""
        now = self._clock()
        lines: list[Line] = []
        while self._windows:
            kind, window = next(iter(self._windows.items()))
            if now - window.started < self._interval_s:
                break
            del self._windows[kind]
            if window.count:
                event, _ = kind
                over_s = round(now - window.started, 1)
                lines.append((event, {**window.last, "repeated": window.count, "over_s": over_s}))
                self._windows[kind] = _Window(started=now)
        return lines
