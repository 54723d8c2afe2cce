"""Rate limits: how they are written, the bucket's arithmetic, and bad configuration."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay.consumer import ConsumerApp, Message, RateLimit, RateLimited
from outbox_relay.consumer.rate_limit import (
    DEFAULT_BUCKET,
    MAX_PAUSE_S,
    due_offsets,
    lease_size,
    lease_span_s,
    next_tat,
    parse_key,
    parse_rate_limit,
    pause_s,
)
from outbox_relay.errors import ConfigurationError


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "limit"),
        [
            ("100/m", RateLimit(max=100, per=60)),
            ("5/s", RateLimit(max=5, per=1)),
            ("3/h", RateLimit(max=3, per=3600)),
            (" 7 / min ", RateLimit(max=7, per=60)),
            ("2/second", RateLimit(max=2, per=1)),
        ],
    )
    def test_the_accepted_forms(self, text: str, limit: RateLimit) -> None:
        assert parse_rate_limit(text) == limit

    def test_a_rate_limit_object_is_taken_as_it_is(self) -> None:
        limit = RateLimit(max=10, per=2.5)
        assert parse_rate_limit(limit) is limit
        assert limit.describe() == "10 per 2.5s"
        assert RateLimit(max=100, per=60).describe() == "100/m"

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("0/s", "at least 1"),
            ("-5/m", "at least 1"),
            ("1.5/s", "whole number"),
            ("10/fortnight", "'N/s', 'N/m' or 'N/h'"),
            ("fast", "'N/s', 'N/m' or 'N/h'"),
        ],
    )
    def test_bad_forms_say_what_is_accepted(self, text: str, says: str) -> None:
        with pytest.raises(ValueError, match=says):
            parse_rate_limit(text)

    @pytest.mark.parametrize(("max_", "per"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, float("inf"))])
    def test_bad_rate_limit_objects(self, max_: int, per: float) -> None:
        with pytest.raises(ValueError, match="must be"):
            RateLimit(max=max_, per=per)


class TestBucket:
    limits = st.builds(
        RateLimit,
        max=st.integers(min_value=1, max_value=500),
        per=st.sampled_from([1.0, 60.0, 3600.0, 0.5, 7.0]),
    )

    @staticmethod
    def simulate(limit: RateLimit, requests: list[tuple[float, int]]) -> list[float]:
        """Absolute due times of every token leased at the given (now, count) requests,
        the way the gate and the store do it together."""
        tat, due = 0.0, []
        for now, count in requests:
            start_s = max(tat, now) - now
            due += [now + offset for offset in due_offsets(limit, start_s=start_s, count=count)]
            tat = next_tat(limit, tat=tat, now=now, count=count)
        return due

    requests = st.lists(
        st.tuples(st.floats(min_value=0, max_value=50), st.integers(min_value=1, max_value=20)),
        min_size=1,
        max_size=60,
    ).map(sorted)

    @settings(max_examples=300, deadline=None)
    @given(limit=limits, requests=requests)
    def test_no_window_holds_more_than_the_burst_plus_the_rate(
        self, limit: RateLimit, requests: list[tuple[float, int]]
    ) -> None:
        due = sorted(self.simulate(limit, requests))
        for i, first in enumerate(due):
            for j in range(i, len(due)):
                window = due[j] - first
                allowed = limit.max + window / limit.interval_s
                assert j - i + 1 <= allowed + 1e-6, (first, due[j])

    @settings(max_examples=300, deadline=None)
    @given(limit=limits, requests=requests)
    def test_no_token_is_due_before_it_was_asked_for(
        self, limit: RateLimit, requests: list[tuple[float, int]]
    ) -> None:
        tat = 0.0
        for now, count in requests:
            offsets = due_offsets(limit, start_s=max(tat, now) - now, count=count)
            assert all(o >= 0 for o in offsets)
            assert offsets == sorted(offsets)
            tat = next_tat(limit, tat=tat, now=now, count=count)

    @given(limit=limits, count=st.integers(min_value=1, max_value=2000))
    def test_under_a_backlog_tokens_come_at_the_rate(self, limit: RateLimit, count: int) -> None:
        """Everyone asks at once: the first ``max`` come now (the burst), then one every
        interval, so the n-th token is due at (n - max) * interval."""
        due = self.simulate(limit, [(0.0, 1)] * count)
        for n, at in enumerate(due, start=1):
            assert at == pytest.approx(max(0.0, (n - limit.max) * limit.interval_s), abs=1e-6)

    @given(limit=limits, gap=st.floats(min_value=0, max_value=1e4))
    def test_after_a_quiet_spell_the_burst_is_at_most_max(
        self, limit: RateLimit, gap: float
    ) -> None:
        due = self.simulate(limit, [(0.0, limit.max), (limit.per + gap, limit.max + 1)])
        second = due[limit.max :]
        now_due = [d for d in second if d <= limit.per + gap]
        assert len(now_due) <= limit.max

    @settings(max_examples=300, deadline=None)
    @given(limit=limits, requests=requests)
    def test_leftover_tokens_expire_before_the_bucket_is_full_again(
        self, limit: RateLimit, requests: list[tuple[float, int]]
    ) -> None:
        """A leased token nobody waited for expires the lease's span after it fell due
        (the gate): by then the bucket's tat has not passed, so no process can take a
        full burst while another still holds a leftover token."""
        tat = 0.0
        for now, asked in requests:
            count = min(asked, limit.max)  # a lease never exceeds the burst
            offsets = due_offsets(limit, start_s=max(tat, now) - now, count=count)
            tat = next_tat(limit, tat=tat, now=now, count=count)
            span = lease_span_s(limit, count)
            assert all(now + offset + span <= tat + 1e-6 for offset in offsets)

    @pytest.mark.parametrize(
        ("limit", "lease"),
        [
            (RateLimit(50, 1), 1),  # 50/s: a round trip a token
            (RateLimit(2000, 1), 40),  # 2,000/s: forty a round trip
            (RateLimit(100, 60), 1),
            (RateLimit(30, 0.01), 30),  # never more than the burst
            (RateLimit(100_000, 1), 100),  # capped
        ],
    )
    def test_lease_size(self, limit: RateLimit, lease: int) -> None:
        assert lease_size(limit) == lease
        assert lease_span_s(limit, lease) == pytest.approx(lease * limit.interval_s)


class TestRateLimited:
    @pytest.mark.parametrize(
        "value", [float("nan"), float("inf"), float("-inf"), 0, 0.0, -5, "soon", True]
    )
    def test_a_retry_after_that_is_not_a_finite_number_above_0_is_refused(self, value: Any) -> None:
        with pytest.raises(ValueError, match=r"retry_after must be a finite number") as caught:
            RateLimited(retry_after=value)
        said = str(caught.value)
        assert said.startswith(f"RateLimited(retry_after={value!r}): ")
        assert "max(value, 1)" in said  # the fix
        assert "raise Retry" in said

    @pytest.mark.parametrize(("value", "seconds"), [(30, 30.0), (0.25, 0.25), ("12", 12.0)])
    def test_a_positive_retry_after_is_kept_in_seconds(self, value: Any, seconds: float) -> None:
        error = RateLimited(retry_after=value)
        assert error.retry_after == seconds
        assert str(error) == f"the handler was rate limited (retry after {seconds:g} s)"

    def test_a_huge_retry_after_is_accepted_and_the_pause_capped(self) -> None:
        assert RateLimited(retry_after=1e300).retry_after == 1e300
        assert pause_s(1e300) == pause_s(float("inf")) == MAX_PAUSE_S == 600
        assert pause_s(42.5) == 42.5

    @pytest.mark.parametrize("seconds", [float("nan"), 0.0, -1.0, float("-inf")])
    def test_a_pause_that_is_not_above_0_is_none(self, seconds: float) -> None:
        assert pause_s(seconds) == 0.0


def message(**kw: Any) -> Message:
    base = Message(
        body={}, raw_body=b"{}", message_id="m", routing_key="k", exchange="e", queue="q"
    )
    return dataclasses.replace(base, **kw)


class TestKeys:
    def test_header_and_body_keys(self) -> None:
        assert parse_key("header:tenant").key_of(message(headers={"tenant": "acme"})) == "acme"
        assert parse_key("header:tenant").key_of(message(headers={"tenant": b"acme"})) == "acme"
        assert parse_key("body:tenant").key_of(message(body={"tenant": 7})) == "7"

    @pytest.mark.parametrize(
        "msg",
        [
            message(),
            message(headers={"tenant": None}),
            message(body=b"raw bytes"),
            message(body=["a", "list"]),
            message(body={"tenant": {"nested": 1}}),
        ],
    )
    def test_messages_without_the_key_share_the_default_bucket(self, msg: Message) -> None:
        assert parse_key("body:tenant").key_of(msg) == DEFAULT_BUCKET
        assert parse_key("header:tenant").key_of(msg) == DEFAULT_BUCKET

    def test_a_key_function_that_fails_means_the_default_bucket(self) -> None:
        def broken(_m: Message) -> str:
            raise KeyError("tenant")

        assert parse_key(broken).key_of(message()) == DEFAULT_BUCKET
        assert parse_key(lambda m: m.routing_key).key_of(message()) == "k"

    @pytest.mark.parametrize("text", ["tenant", "header:", "payload:tenant", ""])
    def test_a_key_naming_nothing_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match="'header:NAME'"):
            parse_key(text)


class TestAppStart:
    def register(self, **kw: Any) -> None:
        app = ConsumerApp(name="shop")

        @app.handler(exchange="orders", queue="mail.orders", name="send_mail", **kw)
        def send_mail(message: Message) -> None:
            pass

    @pytest.mark.parametrize(
        ("kw", "says"),
        [
            ({"rate_limit": "0/s"}, "rate_limit: '0/s': the count must be a whole number"),
            ({"rate_limit": "-5/m"}, "rate_limit: '-5/m': the count must be a whole number"),
            ({"rate_limit": "10/fortnight"}, "rate_limit: '10/fortnight' is not a rate"),
            ({"rate_limit": 5}, "rate_limit: 5: write it as"),
            ({"rate_limit": "5/s", "rate_limit_key": "tenant"}, "rate_limit_key: 'tenant' names"),
            ({"rate_limit_key": "header:tenant"}, "set rate_limit too"),
        ],
    )
    def test_bad_configuration_names_the_handler_and_the_fix(
        self, kw: dict[str, Any], says: str
    ) -> None:
        with pytest.raises(ConfigurationError) as caught:
            self.register(**kw)
        assert str(caught.value).startswith("handler send_mail (queue 'mail.orders'): ")
        assert says in str(caught.value)

    def test_a_body_key_must_be_a_field_of_the_payload_type(self) -> None:
        @dataclasses.dataclass
        class Order:
            order_id: int
            tenant: str

        app = ConsumerApp(name="shop")

        @app.handler(exchange="o", queue="a", rate_limit="5/s", rate_limit_key="body:tenant")
        def fine(order: Order) -> None:
            pass

        with pytest.raises(ConfigurationError, match=r"Order has no field 'tenat'; name one of"):

            @app.handler(exchange="o", queue="b", rate_limit="5/s", rate_limit_key="body:tenat")
            def typo(order: Order) -> None:
                pass

        assert fine.rate_limit == RateLimit(5, 1)
        assert fine.rate_key is not None
        assert fine.rate_key.describe() == "key body:tenant"

    def test_a_rate_limit_needs_the_database(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("OUTBOX_RELAY_DATABASE_URL", raising=False)
        app = ConsumerApp(name="shop", amqp_url="amqp://x")

        @app.handler(exchange="o", queue="a", rate_limit="5/s")
        def limited(message: Message) -> None:
            pass

        with pytest.raises(ConfigurationError, match=r"limited have a rate limit.*database_url"):
            app.settings()
