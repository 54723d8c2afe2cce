"""Where failed messages go and what they carry: pure decisions."""

from __future__ import annotations

import base64
import datetime as dt
import math
from decimal import Decimal
from typing import Any

import pika.data
import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.consumer.failure import (
    DROPPED_HEADERS_HEADER,
    ERROR_TRACE_HEADER,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_TRACE_CHARS,
    RAW_PROPERTIES_HEADER,
    RAW_PROPERTIES_SIZE_HEADER,
    ErrorInfo,
    RetryRoute,
    destination,
    failure_headers,
    fit_headers,
    tier_for_delay,
    truncate_tail,
    wire_value,
)
from outbox_relay.consumer.lenient_frames import FRAME_OVERHEAD
from outbox_relay.consumer.settle import fitted

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


class TestWireValues:
    """What pika decodes must go out again when the message is retried or parked."""

    @pytest.mark.parametrize(
        "value",
        [
            None,
            True,
            "text",
            b"\xff",
            -(2**63),
            2**63 - 1,
            Decimal("2.147483647E-246"),
            Decimal(-(2**31)),
            dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
            dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc),
            {"nested": [1, {"deeper": b"x"}]},
        ],
    )
    def test_values_amqp_carries_stay_as_they_are(self, value: object) -> None:
        assert wire_value(value) == value
        pika.data.encode_value([], wire_value(value))

    @pytest.mark.parametrize(
        "value",
        [
            2**63,
            -(2**63) - 1,
            int(1e308),  # what pika makes of a large double header
            Decimal("1E+20"),
            Decimal("1E-300"),
            Decimal("NaN"),
            dt.datetime(1969, 12, 31, tzinfo=dt.timezone.utc),
            object(),
        ],
    )
    def test_values_amqp_cannot_carry_travel_as_text(self, value: object) -> None:
        with pytest.raises(Exception):  # noqa: B017, PT011 - pika's encoder refuses it
            pika.data.encode_value([], value)
        assert wire_value(value) == str(value)
        assert wire_value([{"k": value}]) == [{"k": str(value)}]

    def test_floats_travel_as_doubles_but_nan_and_infinity_as_text(self) -> None:
        assert wire_value({"f": [1.5, 0.0, -2.75e300]}) == {"f": [1.5, 0.0, -2.75e300]}
        assert wire_value([math.nan, math.inf]) == ["nan", "inf"]

    def test_failure_headers_carry_the_raw_properties_and_their_size(self) -> None:
        headers = failure_headers(
            {"big": 10**30},
            attempt=1,
            error=ErrorInfo(type="E", message="m"),
            failed_queue="q",
            routing_key="k",
            exchange="x",
            raw_properties=b"\x00\x01\xff",
        )
        assert headers["big"] == str(10**30)
        assert base64.b64decode(headers[RAW_PROPERTIES_HEADER]) == b"\x00\x01\xff"
        assert headers[RAW_PROPERTIES_SIZE_HEADER] == 3


def encoded_size(headers: dict[str, Any]) -> int:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, headers)
    return len(b"".join(pieces))


def ours(trace: str = "t" * 4000) -> dict[str, Any]:
    return failure_headers(
        {},
        attempt=1,
        error=ErrorInfo(type="E", message="m", trace=trace),
        failed_queue="q",
        routing_key="k",
        exchange="x",
    )


class TestFitHeaders:
    def test_headers_that_fit_are_left_alone(self) -> None:
        headers = {**ours(), "a": b"x" * 100}
        assert fit_headers(headers, size_of=encoded_size, limit=10_000) == headers

    def test_the_raw_properties_are_cut_first(self) -> None:
        headers = {**ours(), RAW_PROPERTIES_HEADER: base64.b64encode(b"r" * 9000).decode()}
        fitted = fit_headers(headers, size_of=encoded_size, limit=12_000)
        assert encoded_size(fitted) <= 12_000
        kept = base64.b64decode(fitted[RAW_PROPERTIES_HEADER])
        assert 0 < len(kept) < 9000
        assert fitted[ERROR_TRACE_HEADER] == headers[ERROR_TRACE_HEADER]

    def test_then_the_trace_then_the_largest_of_the_messages_own_headers(self) -> None:
        headers = {**ours(), "small": b"s" * 10, "large": b"l" * 5000, "mid": b"m" * 3000}
        fitted = fit_headers(headers, size_of=encoded_size, limit=5000)
        assert encoded_size(fitted) <= 5000
        assert fitted[ERROR_TRACE_HEADER] == "...[truncated]..."
        assert fitted[DROPPED_HEADERS_HEADER] == ["large"]
        assert fitted["small"] == b"s" * 10
        assert fitted["mid"] == b"m" * 3000

    @given(
        own=st.dictionaries(st.text(max_size=20), st.binary(max_size=3000), max_size=8),
        raw=st.binary(max_size=6000),
        limit=st.integers(1500, 30_000),
    )
    def test_whatever_the_headers_they_fit_once_ours_alone_would(
        self, own: dict[str, bytes], raw: bytes, limit: int
    ) -> None:
        headers = {**own, **ours(), RAW_PROPERTIES_HEADER: base64.b64encode(raw).decode()}
        fitted = fit_headers(headers, size_of=encoded_size, limit=limit)
        assert encoded_size(fitted) <= limit
        for key in set(own) - set(fitted):
            assert key in fitted[DROPPED_HEADERS_HEADER]


class TestFittedProperties:
    """What the runner republishes always fits one content-header frame and encodes."""

    original = pika.BasicProperties(  # type: ignore[no-untyped-call]
        message_id="m-1", content_type="application/json", timestamp=1_700_000_000
    )

    def frame_size(self, properties: pika.BasicProperties) -> int:
        return len(b"".join(properties.encode())) + FRAME_OVERHEAD  # type: ignore[no-untyped-call]

    def test_headers_too_large_for_the_frame_are_cut_to_fit(self) -> None:
        headers = {**ours(), "large": b"l" * 10_000, RAW_PROPERTIES_HEADER: "QUJD" * 3000}
        fitted_ = fitted(self.original, headers, frame_max=8192)
        assert self.frame_size(fitted_) <= 8192
        assert fitted_.message_id == "m-1"
        assert fitted_.headers[DROPPED_HEADERS_HEADER] == ["large"]

    def test_a_value_no_one_made_encodable_drops_the_messages_own_headers(self) -> None:
        headers = {**ours(), "odd": object(), "fine": "x"}
        fitted_ = fitted(self.original, headers, frame_max=131_072)
        assert fitted_.headers[DROPPED_HEADERS_HEADER] == ["odd", "fine"]
        assert fitted_.headers[ERROR_TRACE_HEADER] == "t" * 4000
        fitted_.encode()  # type: ignore[no-untyped-call]
