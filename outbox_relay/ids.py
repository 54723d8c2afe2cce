"""Message ids: time-ordered UUIDs (RFC 9562 version 7), monotonic within a process.

Version 7 ids start with the time, so they sort in the order they were made (as text
too). A consumer's inbox is keyed by (consumer, message id): its inserts append to that
index, where a random UUID (version 4) would land anywhere and touch a random leaf page.
The outbox has no index on the id (see sql/schema.sql).

A millisecond holds many ids, so the bits after the time are not all random: as in
Python 3.14's ``uuid.uuid7`` (RFC 9562 section 6.2, method 1), 42 of them are a counter
that starts at a random value below 2**41 in each new millisecond and goes up by one for
each id made in the same millisecond; the last 32 bits are random. Ids made one after
the other in a process therefore sort in the order they were made. When the clock goes
back, the time of the last id is kept and the counter goes on; when the counter runs
over (2**41 ids in a millisecond at least), the time moves on by one millisecond. Ids of
different processes made in the same millisecond sort by their random counters.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

_VERSION_7 = 0x7
_VARIANT_RFC = 0b10
_MS_MASK = (1 << 48) - 1
_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
# A new millisecond's counter starts below half its range, leaving room to count up.
_COUNTER_START_MASK = (1 << (_COUNTER_BITS - 1)) - 1
_TAIL_MASK = (1 << 32) - 1
_VERSION_AND_VARIANT = (_VERSION_7 << 76) | (_VARIANT_RFC << 62)


def _layout(ms: int, counter: int, tail: int) -> int:
    """The 128 bits: 48 of milliseconds, version, 12 counter bits, variant, 30 counter
    bits, 32 random bits."""
    return (
        ((ms & _MS_MASK) << 80)
        | ((counter >> 30) << 64)
        | ((counter & 0x3FFF_FFFF) << 32)
        | (tail & _TAIL_MASK)
        | _VERSION_AND_VARIANT
    )


class Uuid7Source:
    """Makes monotonic version 7 UUIDs; thread-safe. The clock (nanoseconds since the
    epoch) and the source of random bytes are parameters for tests."""

    def __init__(
        self,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock_ns = clock_ns
        self._random_bytes = random_bytes
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self) -> uuid.UUID:
        with self._lock:
            ms = self._clock_ns() // 1_000_000
            if ms > self._last_ms:
                rand = int.from_bytes(self._random_bytes(10), "big")
                counter = (rand >> 32) & _COUNTER_START_MASK
                tail = rand
            else:
                ms = self._last_ms  # the same millisecond, or the clock went back
                counter = self._counter + 1
                if counter > _COUNTER_MAX:
                    ms += 1
                    rand = int.from_bytes(self._random_bytes(10), "big")
                    counter = (rand >> 32) & _COUNTER_START_MASK
                    tail = rand
                else:
                    tail = int.from_bytes(self._random_bytes(4), "big")
            self._last_ms = ms
            self._counter = counter
        return uuid.UUID(int=_layout(ms, counter, tail))


_source = Uuid7Source()


def uuid7(*, unix_ms: int | None = None, random_bytes: bytes | None = None) -> uuid.UUID:
    """A version 7 UUID that sorts after every id this process made before it.

    With ``unix_ms`` or ``random_bytes`` (tests, fixtures) it is built from them alone,
    outside the process's sequence: 48 bits of ``unix_ms``, then 74 bits of the ten
    ``random_bytes`` (their first 12 bits and their last 62).
    """
    if unix_ms is None and random_bytes is None:
        return _source()
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = os.urandom(10) if random_bytes is None else random_bytes
    if len(rand) != 10:
        raise ValueError("uuid7 needs exactly 10 random bytes")
    rand_int = int.from_bytes(rand, "big")
    rand_a = (rand_int >> 68) & 0xFFF  # 12 bits
    rand_b = rand_int & ((1 << 62) - 1)  # 62 bits
    return uuid.UUID(int=((ms & _MS_MASK) << 80) | (rand_a << 64) | rand_b | _VERSION_AND_VARIANT)
