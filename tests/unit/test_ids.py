"""Message ids: version 7 UUIDs that sort in the order a process made them."""

from __future__ import annotations

import itertools
import random
import time
import uuid

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.ids import Uuid7Source, uuid7

MS = 1_000_000  # nanoseconds


class TestMonotonic:
    def test_ids_made_in_a_tight_loop_sort_in_creation_order(self) -> None:
        ids = [uuid7() for _ in range(100_000)]
        assert ids == sorted(ids)
        assert [str(i) for i in ids] == sorted(str(i) for i in ids)
        assert len(set(ids)) == len(ids)

    @given(
        st.lists(st.integers(0, 2**48 - 2), min_size=1, max_size=60),
        st.randoms(use_true_random=False),
    )
    def test_any_clock_gives_increasing_ids(self, clock_ms: list[int], rnd: random.Random) -> None:
        # The clock may stand still, jump ahead, or go back: the ids still go up.
        ticks = iter(clock_ms)
        source = Uuid7Source(
            clock_ns=lambda: next(ticks) * MS,
            random_bytes=rnd.randbytes,
        )
        ids = [source() for _ in clock_ms]
        assert all(a.bytes < b.bytes for a, b in itertools.pairwise(ids))
        assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)

    @given(st.integers(0, 2**48 - 2), st.binary(min_size=10, max_size=10))
    def test_a_new_millisecond_starts_the_counter_low(self, ms: int, rand: bytes) -> None:
        # Below 2**41: at least 2**41 more ids fit in the millisecond before it runs over.
        source = Uuid7Source(clock_ns=lambda: ms * MS, random_bytes=lambda n: rand[:n])
        value = source().int
        counter = ((value >> 64) & 0xFFF) << 30 | ((value >> 32) & 0x3FFF_FFFF)
        assert counter < 2**41
        assert value >> 80 == ms

    def test_the_clock_going_back_keeps_the_last_time(self) -> None:
        ticks = iter([5 * MS, 3 * MS])
        source = Uuid7Source(clock_ns=lambda: next(ticks))
        first, second = source(), source()
        assert first.int >> 80 == second.int >> 80 == 5
        assert first < second


class TestLayout:
    def test_uuid7_layout(self) -> None:
        value = uuid7(unix_ms=0x0123456789AB, random_bytes=bytes(range(10)))
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert value.hex.startswith("0123456789ab7")

    @given(st.integers(0, 2**48 - 2), st.integers(0, 2**48 - 2))
    def test_later_milliseconds_sort_later(self, a: int, b: int) -> None:
        first, second = uuid7(unix_ms=min(a, b)), uuid7(unix_ms=max(a, b) + 1)
        assert first.bytes < second.bytes

    def test_the_time_is_now(self) -> None:
        before = time.time_ns() // MS
        value = uuid7()
        assert before <= value.int >> 80 <= time.time_ns() // MS + 1
