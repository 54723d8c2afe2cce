"""The relay loop driven through fakes of the store and the publisher."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytest
from structlog.testing import capture_logs

from outbox_relay.errors import (
    BrokerUnavailableError,
    PublishInterruptedError,
    StoreMisconfiguredError,
    StoreUnavailableError,
)
from outbox_relay.message import OutboxRow
from outbox_relay.relay import NullObserver, Relay, RelaySettings
from outbox_relay.relay.outcome import Failure, Outcome, Reason
from outbox_relay.relay.partitions import Leases
from outbox_relay.relay.ports import SendResult
from outbox_relay.relay.wakeup import BUSY_POLL_S, FLAG_TRUST_S, LATE_LOOK_S, QUIET_CLAIMS, Notices
from tests.support.fakes import (
    FakeClaim,
    FakeStore,
    ScriptedPublisher,
    ScriptedSending,
    TableStore,
    relay_for,
    row,
)


class TestRunBatch:
    def test_confirmed_rows_are_deleted_in_one_settle(self) -> None:
        store = FakeStore([row(1), row(2), row(3)])
        result = relay_for(store, ScriptedPublisher([{}])).run_batch()
        assert store.settled == [([1, 2, 3], [])]
        assert (result.published, result.failed, result.held) == (3, 0, 0)

    def test_unsent_rows_go_again_but_not_behind_a_failure_of_their_key(self) -> None:
        rows = [row(1, "a"), row(2, "a"), row(3, "b"), row(4, "a"), row(5, None)]
        first = {
            2: Outcome.failed("boom", Reason.NACKED),
            3: Outcome.unsent(),
            4: Outcome.unsent(),
            5: Outcome.unsent(),
        }
        publisher = ScriptedPublisher([first, {}])
        store = FakeStore(rows)
        result = relay_for(store, publisher).run_batch()
        assert publisher.sent == [[1, 2, 3, 4, 5], [3, 5]]
        [(published, failures)] = store.settled
        assert published == [1, 3, 5]
        assert [(f.row_id, f.error, f.dead) for f in failures] == [(2, "boom", False)]
        assert result.held == 1  # row 4 stays untouched in the table

    def test_rows_to_a_missing_exchange_fail_before_sending_and_hold_their_key(self) -> None:
        rows = [row(1, "a", exchange="gone"), row(2, "a"), row(3, "b")]
        publisher = ScriptedPublisher([{}], missing={"gone": "exchange 'gone' does not exist"})
        store = FakeStore(rows)
        relay_for(store, publisher).run_batch()
        assert publisher.sent == [[3]]
        assert store.settled == [
            (
                [3],
                [
                    Failure(
                        1,
                        "exchange 'gone' does not exist",
                        0.75,
                        dead=False,
                        reason=Reason.MISSING_EXCHANGE,
                    )
                ],
            )
        ]

    def test_a_row_amqp_cannot_carry_is_dead_at_once_before_the_exchange_check(self) -> None:
        long_name = "E" * 300
        rows = [row(1, "a", exchange=long_name), row(2, "a"), row(3, "b")]
        publisher = ScriptedPublisher([{}])
        store = FakeStore(rows)
        relay_for(store, publisher).run_batch()
        assert long_name not in publisher.exchanges_checked
        assert publisher.sent == [[3]]
        [(published, [failure])] = store.settled
        assert published == [3]
        assert (failure.row_id, failure.dead, failure.reason) == (1, True, Reason.UNENCODABLE)
        assert "exchange is 300 bytes; AMQP allows 255" in failure.error

    def test_rows_to_a_missing_exchange_are_recorded_when_sending_the_rest_fails(self) -> None:
        rows = [row(1, "a", exchange="gone"), row(2, "b")]
        interrupted = PublishInterruptedError("the partition lease ran out")
        publisher = ScriptedPublisher([], missing={"gone": "exchange 'gone' does not exist"})

        def lease_over(
            rows: Sequence[OutboxRow], *, deadline: float | None = None
        ) -> ScriptedSending:
            raise interrupted

        publisher.send = lease_over  # type: ignore[method-assign]
        store = FakeStore(rows)
        with pytest.raises(PublishInterruptedError):
            relay_for(store, publisher).run_batch()
        [(published, failures)] = store.settled
        assert published == []
        assert [(f.row_id, f.reason) for f in failures] == [(1, Reason.MISSING_EXCHANGE)]

    def test_the_last_attempt_marks_the_row_dead(self) -> None:
        store = FakeStore([row(1, attempts=2)])
        relay = relay_for(
            store,
            ScriptedPublisher([{1: Outcome.failed("unroutable", Reason.UNROUTABLE)}]),
            max_attempts=3,
        )
        with capture_logs() as logs:
            relay.run_batch()
        assert store.settled == [
            ([], [Failure(1, "unroutable", 0.0, dead=True, reason=Reason.UNROUTABLE)])
        ]
        assert [entry["event"] for entry in logs] == ["relay.row_dead", "relay.batch_published"]
        assert logs[0]["row_id"] == 1

    @pytest.mark.parametrize("attempts", [-(2**31), -1, 2**31 - 2, 2**31 - 1])
    def test_attempts_at_the_ends_of_their_type_fail_the_row_and_nothing_else(
        self, attempts: int
    ) -> None:
        store = FakeStore([row(1, "a", attempts=attempts), row(2, "b")])
        publisher = ScriptedPublisher([{1: Outcome.failed("nacked", Reason.NACKED)}])
        relay_for(store, publisher, max_attempts=3).run_batch()
        [(published, [failure])] = store.settled
        assert published == [2]
        assert failure.row_id == 1
        assert failure.dead == (attempts > 0)
        assert 0.0 <= failure.retry_in_s <= 300.0

    def test_a_row_no_retry_can_help_is_dead_at_its_first_attempt(self) -> None:
        store = FakeStore([row(1, "a"), row(2, "b"), row(3, "c")])
        unencodable = Outcome.failed("routing_key is 300 bytes", Reason.UNENCODABLE)
        too_large = Outcome.failed("over max_message_size", Reason.TOO_LARGE)
        unroutable = Outcome.failed("unroutable", Reason.UNROUTABLE)
        publisher = ScriptedPublisher([{1: unencodable, 2: too_large, 3: unroutable}])
        relay_for(store, publisher).run_batch()
        [(_, failures)] = store.settled
        assert [(f.row_id, f.dead) for f in failures] == [(1, True), (2, True), (3, False)]

    def test_an_interrupted_batch_settles_what_was_confirmed_and_keeps_the_rest(self) -> None:
        store = FakeStore([row(1), row(2), row(3)])
        interrupted = SendResult(
            {1: Outcome.confirmed()}, PublishInterruptedError("connection lost")
        )
        with pytest.raises(PublishInterruptedError):
            relay_for(store, ScriptedPublisher([interrupted])).run_batch()
        assert store.settled == [([1], [])]

    def test_an_unexpected_error_releases_every_claimed_row(self) -> None:
        store = FakeStore([row(1)])
        with pytest.raises(RuntimeError):
            relay_for(store, ScriptedPublisher([RuntimeError("bug")])).run_batch()
        assert store.settled == []
        assert store.released == 1

    def test_an_empty_claim_ends_its_transaction(self) -> None:
        store = FakeStore([])
        assert relay_for(store, ScriptedPublisher([])).run_batch().claimed == 0
        assert store.released == 1

    def test_a_round_that_cannot_open_a_channel_settles_what_the_first_confirmed(
        self,
    ) -> None:
        store = FakeStore([row(1), row(2), row(3, "a", exchange="gone")])
        publisher = ScriptedPublisher(
            [{2: Outcome.unsent()}], missing={"gone": "exchange 'gone' does not exist"}
        )
        publisher.fail_after(1, BrokerUnavailableError("cannot open a confirm-mode channel: x"))
        with pytest.raises(PublishInterruptedError, match="cannot open a confirm-mode channel"):
            relay_for(store, publisher).run_batch()
        # Row 1 is not published again later; row 3's failure is recorded; row 2 stays.
        [(published, failures)] = store.settled
        assert published == [1]
        assert [f.row_id for f in failures] == [3]
        assert store.released == 0

    def test_rounds_are_bounded_when_the_channel_keeps_dying(self) -> None:
        store = FakeStore([row(1), row(2)])
        always_unsent = [{1: Outcome.unsent(), 2: Outcome.unsent()} for _ in range(10)]
        publisher = ScriptedPublisher(always_unsent)  # type: ignore[arg-type]
        relay_for(store, publisher).run_batch()
        assert len(publisher.sent) == 5
        assert store.settled == [([], [])]


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
    return condition()


# Rows 1-4 in batches of two, the second sent only once the first is confirmed.
ONE_BATCH_AT_A_TIME = [
    ("send", [1, 2]),
    ("outcomes", [1, 2]),
    ("send", [3, 4]),
    ("outcomes", [3, 4]),
]


class TestRunBatches:
    """Batches back to back, the next claimed while one is published."""

    def pipelined(self, store: FakeStore, publisher: ScriptedPublisher) -> Relay:
        return relay_for(store, publisher, batch_size=2)  # entered: its store thread runs

    def test_a_backlog_goes_in_full_batches_until_one_comes_back_short(self) -> None:
        store = TableStore([row(i) for i in range(1, 8)])
        publisher = ScriptedPublisher([{}, {}, {}, {}])
        result = self.pipelined(store, publisher).run_batches()
        assert publisher.sent == [[1, 2], [3, 4], [5, 6], [7]]
        assert [published for published, _ in store.settled] == [[1, 2], [3, 4], [5, 6], [7]]
        assert (result.claimed, result.published, result.failed) == (7, 7, 0)
        assert store.locked == set()

    def test_the_next_batch_is_claimed_before_this_one_is_settled(self) -> None:
        store = TableStore([row(1, "a"), row(2, "b"), row(3, "a"), row(4, "c")])
        publisher = ScriptedPublisher([{1: Outcome.failed("nacked", Reason.NACKED)}, {}])
        original = publisher.send

        def send_once_the_next_is_claimed(
            rows: Sequence[OutboxRow], *, deadline: float | None = None
        ) -> ScriptedSending:
            assert wait_until(lambda: len(store.claims) >= 2)
            return original(rows, deadline=deadline)

        publisher.send = send_once_the_next_is_claimed  # type: ignore[method-assign]
        result = self.pipelined(store, publisher).run_batches()
        # Row 3 was claimed while row 1 was in flight; it stays behind row 1's retry.
        assert store.claims[:2] == [[1, 2], [3, 4]]
        assert publisher.sent == [[1, 2], [4]]
        assert store.settled[1] == ([4], [])
        assert (result.claimed, result.published, result.failed, result.held) == (4, 2, 1, 1)
        assert store.claim(10).rows == []  # row 3 waits for row 1

    def test_an_interrupted_batch_settles_what_was_confirmed_and_releases_the_next(self) -> None:
        store = TableStore([row(i) for i in range(1, 6)])
        interrupted = SendResult(
            {3: Outcome.confirmed()}, PublishInterruptedError("connection lost")
        )
        publisher = ScriptedPublisher([{}, interrupted])
        with pytest.raises(PublishInterruptedError):
            self.pipelined(store, publisher).run_batches()
        assert sorted(store.settled) == [([1, 2], []), ([3], [])]
        assert store.locked == set()
        assert store.gone == {1, 2, 3}

    def test_the_next_batch_goes_out_before_this_one_is_confirmed(self) -> None:
        store = TableStore([row(1), row(2, "a"), row(3), row(4, "b"), row(5)])
        publisher = ScriptedPublisher([{}, {}, {}])
        result = self.pipelined(store, publisher).run_batches()
        assert publisher.events == [
            ("send", [1, 2]),
            ("send", [3, 4]),  # no key of it is in [1, 2]
            ("outcomes", [1, 2]),
            ("send", [5]),
            ("outcomes", [3, 4]),
            ("outcomes", [5]),
        ]
        assert [published for published, _ in store.settled] == [[1, 2], [3, 4], [5]]
        assert (result.claimed, result.published) == (5, 5)
        assert store.locked == set()

    def test_a_batch_not_written_out_is_confirmed_before_the_next_goes(self) -> None:
        store = TableStore([row(i) for i in range(1, 5)])
        publisher = ScriptedPublisher([{}, {}])
        publisher.flushes = False  # a blocked or stalled broker
        self.pipelined(store, publisher).run_batches()
        assert publisher.events == ONE_BATCH_AT_A_TIME
        assert store.gone == {1, 2, 3, 4}

    def test_a_batch_with_a_key_of_the_batch_out_waits_for_its_confirms(self) -> None:
        store = TableStore([row(1, "a"), row(2), row(3), row(4, "a")])
        publisher = ScriptedPublisher([{}, {}])
        self.pipelined(store, publisher).run_batches()
        assert publisher.events == ONE_BATCH_AT_A_TIME
        assert store.gone == {1, 2, 3, 4}

    def test_a_dropped_connection_with_two_batches_out_loses_nothing(self) -> None:
        store = TableStore([row(i) for i in range(1, 7)])
        interrupted = SendResult(
            {1: Outcome.confirmed()}, PublishInterruptedError("connection lost")
        )
        publisher = ScriptedPublisher([interrupted])
        with pytest.raises(PublishInterruptedError):
            self.pipelined(store, publisher).run_batches()
        assert publisher.events == [
            ("send", [1, 2]),
            ("send", [3, 4]),
            ("outcomes", [1, 2]),
            ("abandon", [3, 4]),  # its confirms will not come: it goes again later
        ]
        assert store.settled == [([1], [])]
        assert store.locked == set()
        assert store.gone == {1}
        assert [r.id for r in store.claim(10).rows] == [2, 3, 4, 5, 6]

    def test_a_failure_to_send_the_next_batch_is_raised_once_the_batch_out_is_settled(self) -> None:
        store = TableStore([row(i) for i in range(1, 5)])
        publisher = ScriptedPublisher([{}])
        publisher.fail_after(1, BrokerUnavailableError("connection lost"))
        with pytest.raises(BrokerUnavailableError):
            self.pipelined(store, publisher).run_batches()
        assert publisher.events == [("send", [1, 2]), ("outcomes", [1, 2])]
        assert store.settled == [([1, 2], [])]
        assert store.released == 1  # the next batch, which never went out
        assert store.locked == set()
        assert [r.id for r in store.claim(10).rows] == [3, 4]

    def test_a_failure_to_claim_ahead_is_raised_once_the_batch_out_is_settled(self) -> None:
        store = TableStore([row(i) for i in range(1, 5)])
        original = store.claim

        def second_claim_fails(limit: int, max_bytes: int = 1 << 30) -> FakeClaim:
            if store.claims:
                raise StoreUnavailableError("connection lost")
            return original(limit, max_bytes)

        store.claim = second_claim_fails  # type: ignore[method-assign]
        publisher = ScriptedPublisher([{}])
        with pytest.raises(StoreUnavailableError):
            self.pipelined(store, publisher).run_batches()
        assert publisher.events == [("send", [1, 2]), ("outcomes", [1, 2])]
        assert store.settled == [([1, 2], [])]
        assert store.locked == set()

    def test_a_channel_closed_under_two_batches_sends_the_first_again_before_the_second(
        self,
    ) -> None:
        store = TableStore([row(i) for i in range(1, 5)])
        cut = {i: Outcome.unsent() for i in range(1, 5)}
        publisher = ScriptedPublisher([cut, {}, cut, {}])
        self.pipelined(store, publisher).run_batches()
        assert publisher.events == [
            ("send", [1, 2]),
            ("send", [3, 4]),
            ("outcomes", [1, 2]),  # the close cut both
            ("send", [1, 2]),
            ("outcomes", [1, 2]),
            ("outcomes", [3, 4]),
            ("send", [3, 4]),
            ("outcomes", [3, 4]),
        ]
        assert [published for published, _ in store.settled] == [[1, 2], [3, 4]]

    def test_stopping_after_the_next_batch_went_out_confirms_and_settles_it(self) -> None:
        store = TableStore([row(i) for i in range(1, 7)])
        publisher = ScriptedPublisher([{}, {}])
        relay = self.pipelined(store, publisher)
        original = publisher.send

        def stop_on_the_second_send(
            rows: Sequence[OutboxRow], *, deadline: float | None = None
        ) -> ScriptedSending:
            if publisher.sent:
                relay.stop()
            return original(rows, deadline=deadline)

        publisher.send = stop_on_the_second_send  # type: ignore[method-assign]
        relay.run_batches()
        assert publisher.sent == [[1, 2], [3, 4]]
        assert [published for published, _ in store.settled] == [[1, 2], [3, 4]]
        assert store.locked == set()
        assert store.gone == {1, 2, 3, 4}

    def test_stopping_publishes_no_batch_claimed_ahead(self) -> None:
        store = TableStore([row(i) for i in range(1, 6)])
        publisher = ScriptedPublisher([{}, {}, {}])
        relay = self.pipelined(store, publisher)
        original = publisher.send

        def send_then_stop(
            rows: Sequence[OutboxRow], *, deadline: float | None = None
        ) -> ScriptedSending:
            relay.stop()
            return original(rows, deadline=deadline)

        publisher.send = send_then_stop  # type: ignore[method-assign]
        relay.run_batches()
        assert publisher.sent == [[1, 2]]
        assert store.settled == [([1, 2], [])]
        assert store.locked == set()


class WakeUpStore(TableStore):
    """A producer commits ``arriving`` when the relay first raises its flag."""

    def __init__(self, arriving: list[OutboxRow]) -> None:
        super().__init__([])
        self.arriving = arriving
        self.flags: list[bool] = []
        self.next_due: float | None = None  # what set_waiting(True) reports, once
        self.next_due_reads = 0
        self.notices: list[Notices] = []
        self.on_notify: Callable[[], None] = lambda: None

    def set_waiting(self, waiting: bool) -> float | None:
        self.flags.append(waiting)
        self.raised_at = time.monotonic()
        if waiting and self.arriving:
            self.rows, self.arriving = self.arriving, []
        due, self.next_due = self.next_due, None
        return due

    def next_due_in(self) -> float | None:
        self.next_due_reads += 1
        return None

    def notify(self) -> None:
        self.on_notify()
        self.notices.append(Notices(1, scheduled=True))

    def drain_notifications(self) -> Notices:
        return self.notices.pop() if self.notices else Notices(0, scheduled=False)


class OutageAtFirstSleep(ScriptedPublisher):
    """The broker connection is lost during the relay's first sleep; the relay is stopped
    at the second."""

    relay: Relay
    outages = 0

    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool:
        if timeout_s <= BUSY_POLL_S:
            time.sleep(timeout_s)
            return False
        if not self.outages:
            self.outages += 1
            raise BrokerUnavailableError("connection lost")
        self.relay.stop("test")
        return False


class SleepStops(ScriptedPublisher):
    """Stops the relay at its first sleep (a wait longer than a busy poll)."""

    relay: Relay

    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool:
        if timeout_s > BUSY_POLL_S:
            self.relay.stop("test")
        return False


def stopping_at_first_sleep(store: WakeUpStore) -> Relay:
    """A relay on ``store`` whose publisher stops it at its first sleep."""
    publisher = SleepStops([])
    relay = serving(store, publisher)
    publisher.relay = relay
    return relay


def serving(store: FakeStore, publisher: ScriptedPublisher, **settings: float) -> Relay:
    """A relay to :meth:`~Relay.run` on the fakes; the publisher stops it."""
    return relay_for(store, publisher, enter=False, **settings)


class TestStep:
    """The loop driven one turn at a time, as an embedder or a test does."""

    def test_a_step_relays_what_is_due_and_says_what_it_did(self) -> None:
        store = TableStore([row(1, "a"), row(2, "b")])
        publisher = ScriptedPublisher([{}])
        relay = relay_for(store, publisher)  # entered: connected, holding its partition
        result = relay.step()
        assert (result.claimed, result.published, result.failed) == (2, 2, 0)
        assert publisher.sent == [[1, 2]]
        assert store.gone == {1, 2}

    def test_steps_that_find_nothing_raise_the_wake_up_flag(self) -> None:
        store = WakeUpStore([])
        relay = relay_for(store, ScriptedPublisher([]))
        for _ in range(QUIET_CLAIMS - 1):
            relay.step()
        assert not relay.flag_up, "producers are not asked for a NOTIFY yet"
        relay.step()
        assert relay.flag_up
        assert store.flags == [True]

    def test_leaving_the_relay_hands_its_partitions_back(self) -> None:
        released: list[bool] = []

        class Leaving(FakeStore):
            def release_leases(self) -> None:
                released.append(True)

        with Relay(
            store=Leaving([]), publisher=ScriptedPublisher([]), settings=RelaySettings()
        ) as relay:
            assert relay.owned_partitions == (0,)
            assert relay.readiness()[0]
        assert released == [True]
        assert not relay.readiness()[0]


class TestServe:
    def test_a_failure_while_the_flag_is_up_refreshes_when_to_wake_and_claims_again(
        self,
    ) -> None:
        # Row 1 goes to a missing exchange and row 2 waits behind it: the relay must learn
        # the retry time (set_waiting returns it) and claim once more before sleeping.
        store = WakeUpStore([row(1, "a", exchange="gone"), row(2, "a")])
        publisher = SleepStops([], missing={"gone": "exchange 'gone' does not exist"})
        relay = serving(store, publisher)
        publisher.relay = relay
        relay.run()
        assert store.flags == [True, True], "the flag raise, then a refresh after the failure"
        # After the quiet claims: the final check, then a claim after the refresh.
        assert store.claims[QUIET_CLAIMS : QUIET_CLAIMS + 2] == [[1, 2], []]
        assert publisher.sent == []

    def test_after_an_outage_the_relay_reads_when_the_next_row_is_due_before_sleeping(
        self,
    ) -> None:
        # A batch cut short by a broker outage had its failures recorded, with their retry
        # times, on its way out; the flag stayed up through the outage (the database
        # connection, which holds it, was not lost).
        store = WakeUpStore([])
        publisher = OutageAtFirstSleep([])
        relay = serving(store, publisher, reconnect_max_s=0.0)
        publisher.relay = relay
        relay.run()  # raises the flag, looks, loses the broker, reconnects, sleeps: stop
        assert store.flags == [True]
        assert publisher.outages == 1
        assert store.next_due_reads == 1
        assert store.claims[-1] == [], "the claim after reconnecting, before the sleep"

    def test_a_claim_cut_short_by_its_byte_budget_is_followed_by_another_while_the_flag_is_up(
        self,
    ) -> None:
        # A NOTIFY wakes the sleeping relay for three rows, each as large as the budget:
        # every claim takes one and leaves the others locked. A claim of one row while
        # the flag is up would mean sleep again; rows left over mean claim again.
        store = WakeUpStore([])
        publisher = SleepsRecorded([{}, {}, {}], stop_after=2, notify_at=1)
        relay = serving(store, publisher, batch_bytes=len(row(0).payload))
        publisher.relay = relay
        publisher.store = store
        store.on_notify = lambda: store.rows.extend([row(1), row(2), row(3)])
        relay.run()
        assert publisher.sent == [[1], [2], [3]]
        assert store.flags == [True], "the flag stays up: one row a claim is not busy"
        assert store.locked == set()

    def test_after_raising_the_flag_the_relay_keeps_looking_for_a_little_while(self) -> None:
        # Producers that saw the flag down just before it went up send no NOTIFY for
        # FLAG_TRUST_S: the relay claims every BUSY_POLL_S for LATE_LOOK_S, then sleeps.
        store = WakeUpStore([])
        publisher = SleepsRecorded([], stop_after=1)
        relay = serving(store, publisher)
        publisher.relay = relay
        relay.run()
        assert store.flags == [True]
        claims_after_raise = len(store.claims) - QUIET_CLAIMS
        assert claims_after_raise >= 1 + LATE_LOOK_S / BUSY_POLL_S / 2
        assert publisher.slept_at[0] - store.raised_at >= LATE_LOOK_S > FLAG_TRUST_S
        # Then the backstop poll, at its interval: the looks are not empty polls.
        assert publisher.sleeps[0] == pytest.approx(RelaySettings().poll_interval_s, abs=0.01)

    def test_a_scheduled_row_is_waited_for_after_the_looks_and_its_successor_read(
        self,
    ) -> None:
        store = WakeUpStore([])
        store.next_due = 0.1  # a retried row
        publisher = SleepsRecorded([], stop_after=2)
        relay = serving(store, publisher)
        publisher.relay = relay
        relay.run()
        first, second = publisher.sleeps
        assert first == pytest.approx(0.1 - LATE_LOOK_S, abs=0.01)
        assert store.next_due_reads == 1, "the due row was taken: what is due next?"
        assert second == pytest.approx(RelaySettings().poll_interval_s, abs=0.01)

    def test_a_notify_for_a_delayed_row_reads_when_it_is_due_even_when_rows_were_claimed(
        self,
    ) -> None:
        # One transaction wrote a message and a delayed one: a single NOTIFY, marked
        # scheduled; the claim finds the first, and the relay must still read the time.
        store = WakeUpStore([])
        publisher = SleepsRecorded([{}], stop_after=3, notify_at=2)
        relay = serving(store, publisher)
        publisher.relay = relay
        publisher.store = store
        store.on_notify = lambda: store.rows.append(row(7))
        relay.run()
        assert publisher.sent == [[7]]
        assert store.next_due_reads == 1

    def test_an_idle_relay_heartbeats_without_claiming_until_its_backstop_poll(self) -> None:
        # Heartbeats every 0.05 s, the first backstop poll 0.5 s after the looks: the
        # sleeps that end for a heartbeat renew the leases and claim nothing.
        store = CountingHeartbeats([])
        publisher = SleepsRecorded([], stop_after=24)
        relay = serving(store, publisher, heartbeat_interval_s=0.05)
        publisher.relay = relay
        publisher.on_sleep = lambda: store.claims_at_sleep.append(len(store.claims))
        relay.run()
        looked = store.claims_at_sleep[0]
        after = [n - looked for n in store.claims_at_sleep]
        assert store.heartbeats >= 12
        # No claim before the poll is due (0.5 s); then polls at doubling intervals, a
        # few claims where a claim at every heartbeat would make one per sleep.
        assert after[:3] == [0] * 3, after
        assert 1 <= after[-1] <= 3, after

    def test_a_heartbeat_that_takes_a_partition_claims_its_rows_at_once(self) -> None:
        # Another relay left: the NOTIFYs for its partition's rows came while it held
        # it, and waiting for the backstop poll would hold them back for seconds.
        store = CountingHeartbeats([], gain_at=5)
        publisher = SleepsRecorded([], stop_after=8)
        relay = serving(store, publisher, heartbeat_interval_s=0.05, poll_interval_s=2.0)
        publisher.relay = relay
        publisher.on_sleep = lambda: store.claims_at_sleep.append(len(store.claims))
        relay.run()
        looked = store.claims_at_sleep[0]
        assert store.heartbeats >= 6
        assert [n - looked for n in store.claims_at_sleep][-1] == 1, store.claims_at_sleep

    @pytest.mark.parametrize("notified", [False, True], ids=["silent", "notify-after-poll"])
    def test_rows_the_backstop_poll_finds_are_reported_unless_a_notify_came(
        self, notified: bool
    ) -> None:
        # The poll ended the first sleep, and its claim found row 7. When a NOTIFY
        # came meanwhile (it waits to be drained), the row was announced after all.
        store = WakeUpStore([])
        publisher = SleepsRecorded([{}], stop_after=3)
        relay = serving(store, publisher, poll_interval_s=0.05)
        publisher.relay = relay

        def first_sleep() -> None:
            if len(publisher.sleeps) == 1:
                store.rows.append(row(7))
                store.notices.extend([Notices(1, scheduled=False)] * notified)

        publisher.on_sleep = first_sleep
        store.notices_waiting = lambda: bool(store.notices)  # type: ignore[method-assign]
        with capture_logs() as logs:
            relay.run()
        assert publisher.sent == [[7]]
        warned = [e for e in logs if e["event"] == "relay.rows_without_wake_up"]
        assert len(warned) == (0 if notified else 1)

    def test_a_notify_read_with_a_heartbeats_answer_is_claimed_before_the_next_sleep(
        self,
    ) -> None:
        # The NOTIFY came while the heartbeat's question was on the LISTEN connection:
        # read with the answer, it leaves nothing on the socket to end the next sleep,
        # which would last until the backstop poll (2 s here).
        store = NoticeWithHeartbeat([], notice_at=5)
        publisher = SleepsRecorded([{}], stop_after=8)
        relay = serving(store, publisher, heartbeat_interval_s=0.05, poll_interval_s=2.0)
        publisher.relay = relay
        publisher.store = store
        publisher.on_sleep = lambda: store.claims_at_sleep.append(len(store.claims))
        relay.run()
        assert publisher.sent == [[7]]
        heard_at = store.claims_at_sleep[store.sleeps_at_notice]
        assert heard_at > store.claims_at_notice, "claimed before the sleep after it"
        assert not store.notices_waiting()

    def test_after_reconnecting_the_relay_claims_even_if_its_last_sleep_was_for_a_heartbeat(
        self,
    ) -> None:
        # The heartbeat after such a sleep found the database gone; the flag was lost
        # with the connection, so no NOTIFY will come for rows committed meanwhile.
        store = CountingHeartbeats([], fail_at=4)
        publisher = SleepsRecorded([], stop_after=6)
        relay = serving(
            store, publisher, heartbeat_interval_s=0.05, poll_interval_s=2.0, reconnect_max_s=0.0
        )
        publisher.relay = relay
        publisher.on_sleep = lambda: store.claims_at_sleep.append(len(store.claims))
        relay.run()
        [(claims, sleeps)] = store.failures
        assert sleeps >= 1, "the heartbeat that failed came after a sleep"
        assert store.claims_at_sleep[sleeps - 1] == claims, "which was for the heartbeat alone"
        assert store.claims_at_sleep[sleeps] > claims, "no claim between reconnect and sleep"


class CountingHeartbeats(WakeUpStore):
    """Counts heartbeats; from the ``gain_at``-th on, holds a second partition; the
    ``fail_at``-th finds the database gone."""

    def __init__(
        self,
        arriving: list[OutboxRow],
        *,
        gain_at: int | None = None,
        fail_at: int | None = None,
    ) -> None:
        super().__init__(arriving)
        self.heartbeats = 0
        self.gain_at = gain_at
        self.fail_at = fail_at
        self.claims_at_sleep: list[int] = []
        self.failures: list[tuple[int, int]] = []  # claims and sleeps made by then

    def heartbeat(self) -> Leases:
        self.heartbeats += 1
        if self.heartbeats == self.fail_at:
            self.failures.append((len(self.claims), len(self.claims_at_sleep)))
            raise StoreUnavailableError("server closed the connection unexpectedly")
        if self.gain_at is not None and self.heartbeats >= self.gain_at:
            return Leases(owned=(0, 1), live=("me",), partitions=2)
        return super().heartbeat()


class NoticeWithHeartbeat(CountingHeartbeats):
    """The ``notice_at``-th heartbeat reads a NOTIFY for row 7 with its answer."""

    def __init__(self, arriving: list[OutboxRow], *, notice_at: int) -> None:
        super().__init__(arriving)
        self.notice_at = notice_at
        self.read: list[Notices] = []
        self.claims_at_notice = self.sleeps_at_notice = -1

    def heartbeat(self) -> Leases:
        leases = super().heartbeat()
        if self.heartbeats == self.notice_at:
            self.rows.append(row(7))
            self.read.append(Notices(1, scheduled=False))
            self.claims_at_notice = len(self.claims)
            self.sleeps_at_notice = len(self.claims_at_sleep)
        return leases

    def notices_waiting(self) -> bool:
        return bool(self.read)

    def drain_notifications(self) -> Notices:
        return self.read.pop() if self.read else super().drain_notifications()


class SleepsRecorded(ScriptedPublisher):
    """Records the relay's sleeps (waits longer than a busy poll), lets the short ones pass
    in real time (the relay reads the monotonic clock), and stops it after some. The
    ``notify_at``-th sleep ends with a NOTIFY marked scheduled."""

    relay: Relay
    store: WakeUpStore

    def __init__(
        self,
        rounds: list[dict[int, Outcome] | Exception],
        *,
        stop_after: int,
        notify_at: int | None = None,
    ) -> None:
        super().__init__(rounds)
        self.sleeps: list[float] = []
        self.slept_at: list[float] = []
        self.stop_after = stop_after
        self.notify_at = notify_at
        self.on_sleep: Callable[[], None] = lambda: None

    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool:
        if timeout_s <= BUSY_POLL_S:
            time.sleep(timeout_s)
            return False
        self.sleeps.append(timeout_s)
        self.slept_at.append(time.monotonic())
        self.on_sleep()
        if len(self.sleeps) >= self.stop_after:
            self.relay.stop("test")
            return False
        if len(self.sleeps) == self.notify_at:
            self.store.notify()
            return True
        if timeout_s <= 0.2:
            time.sleep(timeout_s)
        return False


class RefusingStore(FakeStore):
    """Connects ``accepts`` times, then refuses as a rotated password would."""

    def __init__(self, accepts: int, relay_stops_after: int = 0) -> None:
        super().__init__([])
        self.accepts = accepts
        self.refusals = 0
        self.stops_after = relay_stops_after
        self.relay: Relay | None = None

    def connect(self) -> None:
        if self.accepts:
            self.accepts -= 1
            return
        self.refusals += 1
        if self.relay is not None and self.refusals >= self.stops_after:
            self.relay.stop("test")
        raise StoreMisconfiguredError(
            "database refused while connecting to postgresql://relay:***@db/app: the "
            "password was refused"
        )

    def claim(self, limit: int, max_bytes: int = 1 << 30) -> FakeClaim:
        raise StoreUnavailableError("connection lost")  # the session is gone


class TestMisconfiguration:
    def test_a_refusal_at_start_ends_the_run_at_once(self) -> None:
        store = RefusingStore(accepts=0)
        relay = Relay(store=store, publisher=ScriptedPublisher([]), settings=RelaySettings())
        with capture_logs() as logs, pytest.raises(StoreMisconfiguredError, match="password"):
            relay.run()
        assert store.refusals == 1
        assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []

    def test_an_outage_at_start_is_retried(self) -> None:
        class DownThenUp(FakeStore):
            tries = 0

            def connect(self) -> None:
                self.tries += 1
                if self.tries < 3:
                    raise StoreUnavailableError("Connection refused")
                relay.stop("test")

        store = DownThenUp([])
        relay = Relay(
            store=store,
            publisher=ScriptedPublisher([]),
            settings=RelaySettings(reconnect_max_s=0.01),
            random_unit=lambda: 0.0,
        )
        relay.run()
        assert store.tries == 3

    def test_a_refusal_later_is_retried_loudly_and_fails_liveness_after_the_limit(
        self,
    ) -> None:
        store = RefusingStore(accepts=1, relay_stops_after=40)
        seen: list[tuple[str, bool, bool]] = []

        class Watch(NullObserver):
            def dependency(self, service: str, *, up: bool, refused: bool) -> None:
                seen.append((service, up, refused))

        relay = Relay(
            store=store,
            publisher=ScriptedPublisher([]),
            settings=RelaySettings(reconnect_max_s=0.0, unhealthy_after_s=0.05),
            random_unit=lambda: 0.0,
            observer=Watch(),
        )
        store.relay = relay
        assert relay.liveness()[0]
        with capture_logs() as logs:
            relay.run()
        assert store.refusals >= 40  # retried, not given up
        refused = [e for e in logs if e["event"] == "relay.dependency_refused"]
        assert len(refused) == 1, "logged at a bounded rate, not per try"
        assert refused[0]["log_level"] == "error"
        assert refused[0]["service"] == "database"
        assert ("database", False, True) in seen
        time.sleep(0.06)
        store.refusals = 0
        alive, reason = relay.liveness()
        assert not alive
        assert reason.startswith("the database has refused for")
        assert "password was refused" in reason


class TestRowLogs:
    def test_rows_to_a_missing_exchange_log_a_bounded_number_of_lines(self) -> None:
        rows = [row(i, exchange="gone") for i in range(1, 3002)]
        store = FakeStore(rows)
        publisher = ScriptedPublisher([], missing={"gone": "exchange 'gone' does not exist"})
        relay = relay_for(store, publisher, batch_size=5000)
        with capture_logs() as logs:
            result = relay.run_batch()
        assert result.failed == 3001
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1
        assert warnings[0]["event"] == "relay.row_failed"
        assert "exchange 'gone' does not exist" in warnings[0]["error"]

    def test_rows_refused_for_their_own_data_are_each_logged(self) -> None:
        rows = [row(1), row(2), row(3)]
        store = FakeStore(rows)
        outcomes = {
            1: Outcome.failed("headers: 'a' does not fit", Reason.UNENCODABLE),
            2: Outcome.failed("headers: 'b' does not fit", Reason.UNENCODABLE),
            3: Outcome.failed("headers: 'a' does not fit", Reason.UNENCODABLE),
        }
        relay = relay_for(store, ScriptedPublisher([outcomes]))
        with capture_logs() as logs:
            relay.run_batch()
        logged = [(e["row_id"], e["error"]) for e in logs if e["log_level"] == "warning"]
        # Row 3 is refused as row 1 was: counted in the next summary, not logged again.
        assert logged == [(1, "headers: 'a' does not fit"), (2, "headers: 'b' does not fit")]
