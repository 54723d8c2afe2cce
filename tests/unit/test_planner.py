"""The relay's sleep/wake planner, driven as the loop drives it, with time as data."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.relay.planner import FlagMove, SleepPlanner, Timer, Wake
from outbox_relay.relay.settings import IDLE_POLL_MAX_S
from outbox_relay.relay.wakeup import BUSY_POLL_S, LATE_LOOK_S, QUIET_CLAIMS, Notices

POLL_S = 0.5
HEARTBEAT_S = 2.0


def planner(heartbeat_s: float = HEARTBEAT_S) -> SleepPlanner:
    return SleepPlanner(poll_interval_s=POLL_S, heartbeat_interval_s=heartbeat_s, batch_size=100)


@dataclass
class Loop:
    """Drives a planner as Relay.step does, against a store that reports ``due_in_s``."""

    planner: SleepPlanner
    now: float = 100.0
    due_in_s: float | None = None
    heartbeats: int = 0
    claims: int = 0
    due_reads: int = 0  # the store said when the next row is due (flag moves included)
    heartbeat_at: float = 0.0

    def start(self) -> None:
        self.reconnect(store=True)

    def reconnect(self, *, store: bool) -> None:
        self.planner.connected(store=store)
        if store:
            self.heartbeat_at = 0.0

    def step(self, claimed: int = 0, failed: int = 0, held: int = 0) -> bool:
        """One round; True when it ended in a sleep."""
        p = self.planner
        if p.heartbeat_due(self.now):
            self.heartbeats += 1
            p.heartbeated(self.now)
            self.heartbeat_at = self.now + HEARTBEAT_S
        if p.sleep_on(gained=False):
            return True
        p.claiming()
        self.claims += 1
        after = p.after_batches(claimed=claimed, failed=failed, held=held)
        if after.flag is not None:
            self.due_reads += 1
            p.flag_moved(self.now, after.flag, self.due_in_s)
        elif after.read_due:
            self.due_reads += 1
            p.due_in(self.now, self.due_in_s)
        self.now += after.pause_s
        return after.sleep

    def sleep(self, *, notices: Notices | None = None, early_by: float = 0.0) -> Timer:
        """Sleep until the timer, or ``early_by`` before it when ``notices`` come."""
        wait = self.planner.next_wait(self.now)
        if notices is None:
            self.now += wait.timeout_s
            self.planner.woke(self.now, Wake.TIMEOUT)
        else:
            self.now += max(0.0, wait.timeout_s - early_by)
            self.planner.woke(self.now, Wake.READABLE)
            self.planner.heard(notices)
        return wait.timer

    def until_flag_up(self) -> None:
        while not self.planner.flag_up:
            self.step()


events = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.integers(0, 200), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("sleep"), st.integers(0, 3), st.booleans(), st.floats(0, 5)),
        st.tuples(st.just("due"), st.one_of(st.none(), st.floats(0, 30))),
        st.tuples(st.just("reconnect"), st.booleans()),
    ),
    max_size=60,
)


class TestInvariants:
    @given(events)
    def test_no_sleep_outlasts_the_heartbeat_or_the_longest_poll(self, script: list) -> None:
        loop = Loop(planner())
        loop.start()
        for event in script:
            if event[0] == "claim":
                loop.step(*event[1:])
            elif event[0] == "due":
                loop.due_in_s = event[1]
            elif event[0] == "reconnect":
                loop.reconnect(store=event[1])
            else:
                count, scheduled, early_by = event[1:]
                wait = loop.planner.next_wait(loop.now)
                assert 0.0 <= wait.timeout_s <= max(POLL_S, IDLE_POLL_MAX_S)
                assert wait.timeout_s <= max(0.0, loop.heartbeat_at - loop.now)
                notices = Notices(count, scheduled=scheduled) if count else None
                loop.now += max(0.0, wait.timeout_s - (early_by if notices else 0.0))
                loop.planner.woke(loop.now, Wake.READABLE if notices else Wake.TIMEOUT)
                if notices is not None:
                    loop.planner.heard(notices)
                    # A NOTIFY is claimed at once, never slept through.
                    assert not loop.planner.sleep_on(gained=False)

    @given(st.integers(0, 20))
    def test_the_backstop_poll_doubles_while_empty_up_to_its_maximum(self, polls: int) -> None:
        loop = Loop(planner(heartbeat_s=1000.0))
        loop.start()
        loop.until_flag_up()
        loop.step()  # the final check
        while loop.planner.next_wait(loop.now).timer is Timer.LOOK:
            loop.sleep()
            loop.step()
        waits = []
        for _ in range(polls):
            wait = loop.planner.next_wait(loop.now)
            assert wait.timer is Timer.POLL
            waits.append(wait.timeout_s)
            loop.sleep()
            loop.step()
        assert waits == sorted(waits)
        assert all(POLL_S <= w <= IDLE_POLL_MAX_S for w in waits)
        assert waits[:4] == [POLL_S, 2 * POLL_S, 4 * POLL_S, 8 * POLL_S][: len(waits)]
        assert waits[4:] == [IDLE_POLL_MAX_S] * len(waits[4:])

    @given(st.floats(0.001, 30.0))
    def test_once_the_scheduled_row_is_due_the_relay_reads_when_the_next_one_is(
        self, due_in_s: float
    ) -> None:
        loop = Loop(planner())
        loop.start()
        loop.due_in_s = due_in_s
        loop.until_flag_up()  # the store reports the due row as the flag goes up
        loop.due_in_s = None
        reads = loop.due_reads
        for _ in range(200):
            if loop.step():
                loop.sleep()
        assert loop.due_reads > reads, "the row due was claimed: what is due next?"


class TestRounds:
    def test_quiet_claims_raise_the_flag_then_look_for_a_while(self) -> None:
        loop = Loop(planner())
        loop.start()
        loop.until_flag_up()
        assert loop.claims == QUIET_CLAIMS
        raised_at = loop.now
        assert loop.step(), "the final check finds nothing: sleep"
        wait = loop.planner.next_wait(loop.now)
        assert wait == type(wait)(BUSY_POLL_S, Timer.LOOK)
        while loop.planner.next_wait(loop.now).timer is Timer.LOOK:
            loop.sleep()
            loop.step()
        assert loop.now - raised_at >= LATE_LOOK_S
        assert loop.planner.next_wait(loop.now) == type(wait)(POLL_S, Timer.POLL)

    def test_a_busy_claim_with_the_flag_up_lowers_it(self) -> None:
        p = planner()
        p.connected(store=True)
        loop = Loop(p)
        loop.until_flag_up()
        p.claiming()
        assert p.after_batches(claimed=50, failed=0, held=0).flag is FlagMove.LOWER

    def test_a_failure_with_the_flag_up_refreshes_when_to_wake(self) -> None:
        loop = Loop(planner())
        loop.start()
        loop.until_flag_up()
        loop.planner.claiming()
        after = loop.planner.after_batches(claimed=1, failed=1, held=1)
        assert after.flag is FlagMove.REFRESH
        assert not after.sleep, "a row held in the table may be due: claim again"

    def test_a_sleep_that_ends_for_the_heartbeat_alone_sleeps_on(self) -> None:
        loop = Loop(SleepPlanner(poll_interval_s=5.0, heartbeat_interval_s=0.1, batch_size=100))
        loop.start()
        loop.until_flag_up()
        while loop.planner.next_wait(loop.now).timer is Timer.LOOK:
            loop.sleep()
            loop.step()
        assert loop.sleep() is Timer.HEARTBEAT
        claims = loop.claims
        assert loop.step(), "heartbeat, then sleep on"
        assert loop.claims == claims
        assert loop.heartbeats >= 2

    def test_a_notify_for_a_delayed_row_reads_when_it_is_due(self) -> None:
        loop = Loop(planner())
        loop.start()
        loop.until_flag_up()
        loop.step()
        reads = loop.due_reads
        loop.sleep(notices=Notices(1, scheduled=True), early_by=0.4)
        loop.step(claimed=1)
        assert loop.due_reads == reads + 1

    @pytest.mark.parametrize("store", [True, False])
    def test_after_reconnecting_the_next_due_row_is_read_before_sleeping(self, store: bool) -> None:
        loop = Loop(planner())
        loop.start()
        loop.until_flag_up()
        loop.step()
        heartbeats = loop.heartbeats
        loop.reconnect(store=store)
        reads = loop.due_reads
        while not loop.step():
            pass
        assert loop.due_reads == reads + 1
        assert loop.heartbeats == heartbeats + store, "a new session heartbeats at once"
