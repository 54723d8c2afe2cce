"""A file descriptor that becomes readable every few milliseconds: the relay's wake-up
where LISTEN cannot work (behind a transaction-mode pooler, without a listen URL).

The relay sleeps until its LISTEN socket is readable; a ticker stands in for that socket,
so the loop stays the same and claims after each tick.
"""

from __future__ import annotations

import contextlib
import os
import threading

# Behind a transaction-mode pooler without --listen-database-url the relay looks for new
# rows this often: a row waits 50 ms on average for it, and an idle relay runs ten empty
# claims a second through the pooler (each well under a millisecond of database time).
POOLED_POLL_S = 0.1


class PollTicker:
    """Writes one byte to a pipe every ``interval_s`` from a daemon thread."""

    def __init__(self, interval_s: float = POOLED_POLL_S) -> None:
        self.interval_s = interval_s
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-relay-poll", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._read

    def drain(self) -> int:
        """Consume the ticks that came since the last drain; returns how many."""
        ticks = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._read, 4096):
                ticks += len(chunk)
        return ticks

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            # A full pipe means the relay has not looked yet: one pending tick is enough.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write, b"\0")
