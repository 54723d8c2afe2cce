"""The reconnect policy: backoff while a service is down, from its base again once connected."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.errors import StoreUnavailableError
from outbox_relay.reconnect import RECONNECT_BASE_S, ReconnectBackoff
from outbox_relay.relay import Relay, RelaySettings
from tests.support.fakes import FakeClaim, FakeStore, ScriptedPublisher


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backoff_with(clock: Clock, *, unit: float = 1.0, max_s: float = 30.0) -> ReconnectBackoff:
    return ReconnectBackoff(base_s=0.5, max_s=max_s, random_unit=lambda: unit, clock=clock)


def waits_over(backoff: ReconnectBackoff, clock: Clock, tries: int) -> list[float]:
    """The waits of ``tries`` failed tries, each made once the wait before it is over."""
    waits = []
    for _ in range(tries):
        wait = backoff.next_wait_s()
        waits.append(wait)
        clock.now += wait
    return waits


class TestReconnectBackoff:
    def test_tries_come_further_apart_as_the_outage_lasts(self) -> None:
        clock = Clock()
        waits = waits_over(backoff_with(clock), clock, 8)
        assert waits == [0.5, 0.5, 0.5, 0.75, 1.125, 1.6875, 2.53125, 3.796875]

    def test_the_wait_stops_at_the_maximum(self) -> None:
        clock = Clock()
        backoff = backoff_with(clock, max_s=4.0)
        backoff.next_wait_s()
        clock.now += 3600
        assert backoff.next_wait_s() == 4.0

    def test_a_successful_connection_starts_the_next_outage_from_the_base(self) -> None:
        clock = Clock()
        backoff = backoff_with(clock)
        waits_over(backoff, clock, 20)
        backoff.connected()
        clock.now += 5
        assert waits_over(backoff, clock, 3) == [0.5, 0.5, 0.5]

    def test_full_jitter_scales_the_wait(self) -> None:
        clock = Clock()
        backoff = backoff_with(clock, unit=0.25)
        assert backoff.next_wait_s() == 0.125
        clock.now += 10
        assert backoff.next_wait_s() == 1.25

    @given(
        events=st.lists(
            st.one_of(st.just("connected"), st.floats(min_value=0.0, max_value=100.0)),
            max_size=100,
        ),
        unit=st.floats(min_value=0.0, max_value=1.0),
        max_s=st.floats(min_value=0.5, max_value=300.0),
    )
    def test_a_service_back_is_tried_within_half_its_outage(
        self, events: list[str | float], unit: float, max_s: float
    ) -> None:
        """Whatever came before, each wait is at most the base, half of how long the
        outage has lasted, or the maximum, whichever is the largest but the maximum."""
        clock = Clock()
        backoff = backoff_with(clock, unit=unit, max_s=max_s)
        since: float | None = None
        for event in events:
            if event == "connected":
                backoff.connected()
                since = None
                continue
            assert isinstance(event, float)
            clock.now += event  # the try itself took this long
            since = clock.now if since is None else since
            wait = backoff.next_wait_s()
            assert 0.0 <= wait <= min(max_s, max(0.5, (clock.now - since) / 2))
            clock.now += wait


class _FlakyStore(FakeStore):
    """Connects as ``script`` says (True: it works); every claim finds the database gone.
    Past the script the relay is stopped."""

    relay: Relay

    def __init__(self, script: list[bool]) -> None:
        super().__init__([])
        self._script = script

    def connect(self) -> None:
        if not self._script:
            self.relay.stop("the test is over")
            raise StoreUnavailableError("the test is over")
        if not self._script.pop(0):
            raise StoreUnavailableError("connection refused")

    def claim(self, limit: int, max_bytes: int = 1 << 30) -> FakeClaim:
        raise StoreUnavailableError("server closed the connection unexpectedly")


class TestRelayReconnects:
    def test_each_outage_starts_its_backoff_from_the_base(self) -> None:
        clock = Clock()
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            clock.now += seconds

        # Three outages: six failed tries, then five, then four; each ends in a connection
        # that is lost again at once (and that loss is the first failed try of the next).
        script = [False] * 6 + [True] + [False] * 4 + [True] + [False] * 3 + [True]
        store = _FlakyStore(script)
        relay = Relay(
            store=store,
            publisher=ScriptedPublisher([]),
            settings=RelaySettings(),
            backoff=backoff_with(clock),
            outage_sleep=sleep,
        )
        store.relay = relay
        relay.run()
        base = RECONNECT_BASE_S
        growing = [base, base, base, 0.75, 1.125, 1.6875]
        assert waits == [*growing, *growing[:5], *growing[:4], base]
