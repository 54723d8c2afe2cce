"""Where failed messages go and what they carry: pure decisions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.consumer.failure import (
    MAX_ERROR_MESSAGE_CHARS,
    MAX_TRACE_CHARS,
    ErrorInfo,
    RetryRoute,
    destination,
    failure_headers,
    tier_for_delay,
    truncate_tail,
)

ROUTE = RetryRoute(
    queue="billing",
    tiers=(("billing.retry.1s", 1.0), ("billing.retry.10s", 10.0), ("billing.retry.1m", 60.0)),
    parking="billing.parking",
    max_attempts=5,
)


class TestDestination:
    def test_each_retry_takes_its_tier_and_the_last_tier_repeats(self) -> None:
        queues = [destination(ROUTE, attempt=n).queue for n in range(1, 5)]
        assert queues == [
            "billing.retry.1s",
            "billing.retry.10s",
            "billing.retry.1m",
            "billing.retry.1m",
        ]

    def test_the_last_attempt_parks(self) -> None:
        assert destination(ROUTE, attempt=5) == destination(ROUTE, attempt=9)
        assert destination(ROUTE, attempt=5).parked
        assert destination(ROUTE, attempt=5).queue == "billing.parking"

    def test_reject_parks_on_the_first_attempt(self) -> None:
        assert destination(ROUTE, attempt=1, reject=True).queue == "billing.parking"

    def test_a_requested_delay_takes_the_shortest_tier_long_enough(self) -> None:
        assert destination(ROUTE, attempt=1, requested_delay_s=5).queue == "billing.retry.10s"
        assert destination(ROUTE, attempt=1, requested_delay_s=0).queue == "billing.retry.1s"
        assert destination(ROUTE, attempt=1, requested_delay_s=3600).queue == "billing.retry.1m"

    def test_a_requested_delay_still_parks_once_attempts_are_exhausted(self) -> None:
        assert destination(ROUTE, attempt=5, requested_delay_s=1).parked

    @given(attempt=st.integers(1, 1000), max_attempts=st.integers(1, 50))
    def test_parks_exactly_when_attempts_are_exhausted(
        self, attempt: int, max_attempts: int
    ) -> None:
        route = RetryRoute("q", (("q.retry.1s", 1.0),), "q.parking", max_attempts)
        assert destination(route, attempt=attempt).parked == (attempt >= max_attempts)

    @given(requested=st.floats(0, 1e6), delays=st.sets(st.floats(0.01, 1e5), min_size=1))
    def test_the_chosen_tier_is_never_shorter_unless_none_is_long_enough(
        self, requested: float, delays: set[float]
    ) -> None:
        tiers = [(f"t{d}", d) for d in delays]
        _, chosen = tier_for_delay(tiers, requested)
        if max(delays) >= requested:
            assert chosen >= requested
            assert all(d < requested or d >= chosen for d in delays)
        else:
            assert chosen == max(delays)


class TestHeaders:
    def test_carry_the_attempt_the_error_and_where_the_message_came_from(self) -> None:
        def charge() -> None:
            raise ValueError("card declined")

        try:
            charge()
        except ValueError as exc:
            error = ErrorInfo.from_exception(exc)
        headers = failure_headers(
            {"tenant": "acme", "x-death": [{"count": 1}]},
            attempt=2,
            error=error,
            failed_queue="billing",
            routing_key="order.paid",
            exchange="orders",
        )
        assert headers["tenant"] == "acme"
        assert "x-death" not in headers
        assert headers["outbox-attempt"] == 2
        assert headers["outbox-error-type"] == "ValueError"
        assert headers["outbox-error-message"] == "card declined"
        assert "ValueError: card declined" in headers["outbox-error-trace"]
        assert headers["outbox-failed-queue"] == "billing"
        assert headers["outbox-original-routing-key"] == "order.paid"
        assert headers["outbox-original-exchange"] == "orders"

    def test_long_messages_and_traces_are_truncated_keeping_the_innermost_frames(self) -> None:
        class DomainError(Exception):
            pass

        def deep(n: int) -> None:
            if n == 0:
                raise DomainError("x" * 10_000)
            deep(n - 1)

        try:
            deep(200)
        except DomainError as exc:
            error = ErrorInfo.from_exception(exc)
        assert len(error.message) == MAX_ERROR_MESSAGE_CHARS
        assert len(error.trace) <= MAX_TRACE_CHARS
        assert error.type.endswith("DomainError")
        assert "in deep" in error.trace
        assert "DomainError: xxx" in error.trace

    def test_a_trace_too_long_keeps_its_end(self) -> None:
        text = "".join(f"frame {n}\n" for n in range(2000))
        kept = truncate_tail(text)
        assert len(kept) == MAX_TRACE_CHARS
        assert kept.startswith("...[truncated]...")
        assert kept.endswith("frame 1999\n")
