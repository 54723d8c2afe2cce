"""Repeated per-row events become one line per cause and target per interval."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.log_summary import RepeatedEvents
from tests.support.clock import FakeClock


class TestRepeatedEvents:
    def test_the_first_goes_out_at_once_and_the_rest_as_one_count(self) -> None:
        clock = FakeClock()
        events = RepeatedEvents(interval_s=10, clock=clock)
        lines = []
        for row_id in range(3001):
            lines += events.record("relay.row_dead", ("missing_exchange", "orders"), row_id=row_id)
        assert lines == [("relay.row_dead", {"row_id": 0})]
        clock.now = 10
        assert events.due() == [
            ("relay.row_dead", {"row_id": 3000, "repeated": 3000, "over_s": 10.0})
        ]
        clock.now = 20
        assert events.due() == []  # nothing more came: forgotten
        assert events.record("relay.row_dead", ("missing_exchange", "orders"), row_id=9) == [
            ("relay.row_dead", {"row_id": 9})
        ]

    def test_one_line_per_cause_and_target(self) -> None:
        clock = FakeClock()
        events = RepeatedEvents(interval_s=10, clock=clock)
        lines = []
        for key in [("missing_exchange", "a"), ("missing_exchange", "b"), ("unroutable", "a")]:
            for _ in range(5):
                lines += events.record("relay.row_failed", key)
        assert len(lines) == 3
        clock.now = 11
        assert sorted(f["repeated"] for _, f in events.due()) == [4, 4, 4]

    def test_a_steady_stream_logs_once_per_interval(self) -> None:
        clock = FakeClock()
        events = RepeatedEvents(interval_s=10, clock=clock)
        lines = []
        for _ in range(1000):  # ten a second for 100 s
            lines += events.record("relay.row_failed", ("unroutable", "orders"))
            clock.now += 0.1
        assert 10 <= len(lines) <= 11
        assert sum(fields.get("repeated", 1) for _, fields in lines) <= 1000

    @given(st.lists(st.tuples(st.floats(0, 5), st.sampled_from("abc")), max_size=300))
    def test_every_event_is_counted_exactly_once(self, script: list[tuple[float, str]]) -> None:
        clock = FakeClock()
        events = RepeatedEvents(interval_s=10, clock=clock)
        lines = []
        for step, key in script:
            clock.now += step
            lines += events.record("e", key)
        clock.now += 11  # past the last interval, whatever the floats' rounding
        lines += events.due()
        assert sum(fields.get("repeated", 1) for _, fields in lines) == len(script)
        # Never more than one line per key per interval, plus the first.
        span = clock.now
        assert len(lines) <= 3 * (span / 10 + 2)
