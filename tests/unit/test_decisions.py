"""Pure decisions of the relay: retry delays, per-key hold-back, ids, URL redaction."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.message import OutboxRow
from outbox_relay.relay.backoff import retry_delay_s
from outbox_relay.relay.ordering import held_back, resend_order, waiting_behind
from outbox_relay.store.sqlfiles import lock_key, notify_channel
from outbox_relay.urls import redact_url, scrub


def row(row_id: int, key: str | None) -> OutboxRow:
    return OutboxRow(
        id=row_id,
        message_id=str(uuid.uuid4()),
        exchange="ex",
        routing_key="rk",
        payload=b"",
        content_type="application/json",
        headers={},
        partition_key=key,
        created_at=dt.datetime.now(tz=dt.timezone.utc),
    )


class TestRetryDelay:
    def test_doubles_from_the_base_and_stops_at_the_cap(self) -> None:
        ceilings = [retry_delay_s(n, base_s=1, max_s=10, jitter=0.999999) for n in range(1, 7)]
        assert [round(c) for c in ceilings] == [1, 2, 4, 8, 10, 10]

    @given(st.integers(1, 10_000), st.floats(0, 1))
    def test_stays_between_half_and_all_of_the_ceiling(self, attempt: int, jitter: float) -> None:
        ceiling = min(300.0, 2.0 ** min(attempt - 1, 62))
        delay = retry_delay_s(attempt, base_s=1.0, max_s=300.0, jitter=jitter)
        assert ceiling / 2 <= delay <= ceiling

    @pytest.mark.parametrize(("attempt", "jitter"), [(0, 0.5), (1, 1.01), (1, -0.1)])
    def test_rejects_meaningless_input(self, attempt: int, jitter: float) -> None:
        with pytest.raises(ValueError, match="must be"):
            retry_delay_s(attempt, jitter=jitter)


class TestHeldBack:
    def test_only_later_rows_of_a_failed_key_wait(self) -> None:
        rows = [row(1, "a"), row(2, "b"), row(3, "a"), row(4, None), row(5, "a"), row(6, "b")]
        assert held_back(rows, failed_ids={3}) == {5}

    def test_rows_without_a_key_never_wait(self) -> None:
        rows = [row(1, None), row(2, None)]
        assert held_back(rows, failed_ids={1}) == set()

    def test_the_earliest_failure_of_a_key_counts(self) -> None:
        rows = [row(1, "a"), row(2, "a"), row(3, "a"), row(4, "a")]
        assert held_back(rows, failed_ids={3, 2}) == {4}

    @given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.booleans()), max_size=30))
    def test_no_row_goes_out_after_an_earlier_failure_of_its_key(
        self, spec: list[tuple[str | None, bool]]
    ) -> None:
        rows = [row(i, key) for i, (key, _) in enumerate(spec, start=1)]
        failed = {i for i, (_, fails) in enumerate(spec, start=1) if fails}
        held = held_back(rows, failed)
        for candidate in rows:
            earlier_failure = any(
                r.id < candidate.id
                and r.partition_key == candidate.partition_key
                and r.id in failed
                for r in rows
            )
            should_wait = (
                candidate.partition_key is not None
                and candidate.id not in failed
                and earlier_failure
            )
            assert (candidate.id in held) == should_wait

    def test_resend_keeps_id_order_and_skips_held_rows(self) -> None:
        rows = [row(3, "a"), row(1, "b"), row(2, "a")]
        assert [r.id for r in resend_order(rows, unsent={1, 2, 3}, held={3})] == [1, 2]


class TestWaitingBehind:
    def test_later_rows_of_a_key_wait_for_its_unconfirmed_rows(self) -> None:
        unconfirmed = [row(3, "a"), row(4, "b"), row(5, None)]
        rows = [row(6, "a"), row(7, "c"), row(8, None), row(9, "b")]
        assert waiting_behind(rows, unconfirmed) == {6, 9}

    def test_a_row_older_than_every_unconfirmed_row_of_its_key_may_go(self) -> None:
        # Row 2 was locked by the batch before when row 5 was claimed after it.
        assert waiting_behind([row(2, "a"), row(6, "a")], [row(5, "a")]) == {6}

    def test_nothing_waits_when_the_batch_before_was_confirmed(self) -> None:
        assert waiting_behind([row(1, "a"), row(2, None)], []) == set()


class TestNames:
    def test_channel_fits_postgres_identifier_limit(self) -> None:
        assert notify_channel("public") == "outbox_relay.public"
        long = notify_channel("s" * 63)
        assert len(long.encode()) <= 63
        assert long != notify_channel("s" * 62 + "t")

    def test_lock_keys_are_stable_signed_64_bit(self) -> None:
        assert lock_key("relay", "public") == lock_key("relay", "public")
        assert lock_key("relay", "public") != lock_key("relay", "other")
        assert -(2**63) <= lock_key("x") < 2**63


class TestRedaction:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("amqp://guest:secret@host:5672/%2F", "amqp://guest:***@host:5672/%2F"),
            (
                "postgresql://u:p%40ss@db/app?sslmode=require",
                "postgresql://u:***@db/app?sslmode=require",
            ),
            ("postgresql://db/app?password=hunter2", "postgresql://db/app?password=***"),
            ("host=db password='a b' user=u", "host=db password=*** user=u"),
            ("postgresql://u@db/app", "postgresql://u@db/app"),
            ("host=db password=s3 cr3t", "host=db password=***"),
            ("host=db password=s3 cr3t port=5", "host=db password=*** port=5"),
            ("postgresql://u:s3cr3t@db:notaport/app", "<unparseable url>"),
            (
                "postgresql://db/app?password=s3cr3t&sslmode=require",
                "postgresql://db/app?password=***&sslmode=require",
            ),
            (
                "amqps://u@mq/%2F?ssl_options=%7B%27certfile%27%3A%27c%27%2C%27password%27%3A%27kp%27%7D",
                "amqps://u@mq/%2F?ssl_options=***",
            ),
        ],
    )
    def test_passwords_never_survive(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected

    @pytest.mark.parametrize(
        ("url", "error"),
        [
            ("host=db password=s3 cr3t", 'missing "=" after "cr3t" in connection info string'),
            ("postgresql://u:s3cr3t@db:x/app", "bad port in u:s3cr3t@db:x"),
            ("postgresql://u:s3%2Fcr3t@db/app", "password s3/cr3t refused"),
            ("postgresql://db/app?password=s3cr3t&x=1", "unknown option for s3cr3t"),
        ],
    )
    def test_driver_errors_are_scrubbed_of_the_password(self, url: str, error: str) -> None:
        scrubbed = scrub(error, url)
        assert "cr3t" not in scrubbed
        assert "***" in scrubbed

    def test_scrubbing_leaves_text_without_secrets_alone(self) -> None:
        assert scrub("connection refused", "postgresql://u@db/app") == "connection refused"
