"""The wake-up hysteresis: when the relay asks for NOTIFY and when it polls."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.relay.wakeup import QUIET_CLAIMS, FlagSeen, Step, WakeUp


def steps(policy: WakeUp, claims: list[int]) -> list[Step]:
    return [policy.after_claim(n) for n in claims]


class TestWakeUp:
    def test_an_idle_relay_polls_briefly_then_raises_the_flag_and_sleeps(self) -> None:
        policy = WakeUp(batch_size=500)
        assert steps(policy, [0] * QUIET_CLAIMS) == [Step.POLL] * (QUIET_CLAIMS - 1) + [
            Step.RAISE_FLAG
        ]
        assert policy.waiting
        assert steps(policy, [0, 0]) == [Step.SLEEP, Step.SLEEP]

    def test_a_trickle_keeps_the_flag_up(self) -> None:
        # A few messages a second: each NOTIFY wakes the relay, which finds one row.
        policy = WakeUp(batch_size=500, waiting=True)
        assert steps(policy, [1, 0, 2, 1, 3, 0]) == [Step.SLEEP] * 6
        assert policy.waiting

    def test_busy_producers_get_the_flag_lowered_and_kept_down(self) -> None:
        policy = WakeUp(batch_size=500, waiting=True)
        assert policy.after_claim(12) is Step.LOWER_FLAG
        # Rows keep coming; short gaps (a few empty polls) do not raise the flag.
        pattern = [9, 0, 0, 14, 1, 0, 7] * 20
        assert Step.RAISE_FLAG not in steps(policy, pattern)
        assert not policy.waiting

    def test_the_flag_goes_up_once_claims_stay_small(self) -> None:
        policy = WakeUp(batch_size=500)
        assert steps(policy, [50, 1, 0, 2, 0]) == [
            Step.CLAIM,
            Step.CLAIM,
            Step.POLL,
            Step.CLAIM,
            Step.POLL,
        ]
        rest = steps(policy, [0] * (QUIET_CLAIMS - 4))
        assert rest == [Step.POLL] * (QUIET_CLAIMS - 5) + [Step.RAISE_FLAG]

    def test_a_full_small_batch_counts_as_busy(self) -> None:
        policy = WakeUp(batch_size=2, waiting=True)
        assert policy.after_claim(2) is Step.LOWER_FLAG
        assert policy.after_claim(2) is Step.CLAIM

    def test_a_lost_flag_starts_over_polling(self) -> None:
        policy = WakeUp(batch_size=500, waiting=True)
        policy.flag_lost()
        assert policy.after_claim(0) is Step.POLL

    @given(st.lists(st.integers(min_value=0, max_value=500), max_size=200))
    def test_the_flag_moves_only_one_way_at_a_time(self, claims: list[int]) -> None:
        policy = WakeUp(batch_size=500)
        up = False
        for n in claims:
            step = policy.after_claim(n)
            if step is Step.RAISE_FLAG:
                assert not up
                up = True
            elif step is Step.LOWER_FLAG:
                assert up
                up = False
            elif step is Step.SLEEP:
                assert up, "the relay sleeps only with the flag up, or nothing would wake it"
            else:
                assert not up, "the relay polls only with the flag down"
            assert policy.waiting == up


class TestFlagSeen:
    KEY = ("db", 5432, "app", "public")

    def test_a_flag_seen_down_is_trusted_for_a_while_from_the_look_then_looked_at_again(
        self,
    ) -> None:
        now = [0.0]
        seen = FlagSeen(trust_s=0.01, clock=lambda: now[0])
        assert seen.must_look(self.KEY), "never seen: look"
        seen.saw(self.KEY, relay_may_wait=False, looked_at=0.0)
        now[0] = 0.0099
        assert not seen.must_look(self.KEY)
        now[0] = 0.01
        assert seen.must_look(self.KEY)
        # Timed from when the look was sent, not from when its answer arrived.
        now[0] = 0.02
        seen.saw(self.KEY, relay_may_wait=False, looked_at=0.015)
        now[0] = 0.025
        assert seen.must_look(self.KEY)

    def test_a_flag_that_may_be_up_is_looked_at_every_time(self) -> None:
        seen = FlagSeen(trust_s=10.0, clock=lambda: 1.0)
        seen.saw(self.KEY, relay_may_wait=False, looked_at=0.5)
        seen.saw(self.KEY, relay_may_wait=True, looked_at=0.6)
        assert seen.must_look(self.KEY)

    def test_an_older_look_answering_late_does_not_override_a_newer_one(self) -> None:
        # Two threads: the newer look saw the flag up; the older one's "down" comes later.
        seen = FlagSeen(trust_s=10.0, clock=lambda: 1.0)
        seen.saw(self.KEY, relay_may_wait=True, looked_at=0.9)
        seen.saw(self.KEY, relay_may_wait=False, looked_at=0.8)
        assert seen.must_look(self.KEY)

    def test_each_database_and_schema_has_its_own_flag(self) -> None:
        seen = FlagSeen(trust_s=10.0, clock=lambda: 0.0)
        seen.saw(self.KEY, relay_may_wait=False, looked_at=0.0)
        assert not seen.must_look(self.KEY)
        assert seen.must_look(("db", 5432, "app", "billing"))
        assert seen.must_look(("db", 5433, "app", "public"))
