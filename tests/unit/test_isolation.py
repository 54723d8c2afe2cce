"""The search for the row the broker refused among several unconfirmed ones."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.message import OutboxRow
from outbox_relay.relay.isolation import ISOLATION_MAX_ROWS, Isolation
from outbox_relay.relay.outcome import Outcome, Reason
from tests.support.fakes import (
    ScriptedPublisher,
    ScriptedSending,
    TableStore,
    relay_for,
    row,
)

REFUSED = Outcome.suspect("the broker closed the connection", Reason.BROKER_REFUSED)
BLAMED = Outcome.failed("the broker closed the connection over this message", Reason.BROKER_REFUSED)
OK = Outcome.confirmed()


def searching(suspects: int) -> Isolation:
    """A search after a refusal with rows 1..suspects unconfirmed."""
    isolation = Isolation()
    isolation.sent(dict.fromkeys(range(1, suspects + 1), REFUSED))
    return isolation


class TestIsolation:
    def test_no_search_without_a_refusal(self) -> None:
        isolation = Isolation()
        isolation.sent({1: OK, 2: Outcome.unsent(), 3: Outcome.failed("x", Reason.NACKED)})
        assert isolation.limit is None

    def test_several_suspects_halve_the_sends(self) -> None:
        isolation = Isolation()
        isolation.sent(dict.fromkeys(range(1, 102), REFUSED))
        assert isolation.limit == ISOLATION_MAX_ROWS, "small sends: few duplicates"
        isolation.sent(dict.fromkeys(range(20, 36), REFUSED))
        assert isolation.limit == 8
        isolation.sent(dict.fromkeys(range(20, 23), REFUSED))
        assert isolation.limit == 2

    def test_a_send_that_goes_through_keeps_the_limit_while_suspects_are_left(self) -> None:
        isolation = searching(10)
        isolation.sent(dict.fromkeys(range(1, 6), OK))
        assert isolation.limit == 5
        isolation.sent(dict.fromkeys(range(6, 11), OK))
        assert isolation.limit is None, "every suspect went through: the search is over"

    def test_the_blamed_row_ends_the_search(self) -> None:
        isolation = searching(10)
        isolation.sent({1: OK, 2: BLAMED})
        assert isolation.limit is None

    def test_a_claim_without_any_suspect_ends_the_search(self) -> None:
        isolation = searching(10)
        isolation.claimed([5, 11, 12])
        assert isolation.limit == 5
        isolation.claimed([11, 12])
        assert isolation.limit is None

    def test_suspects_of_two_batches_are_kept_together(self) -> None:
        isolation = searching(10)
        isolation.sent(dict.fromkeys(range(11, 15), REFUSED))
        assert isolation.limit == 2
        isolation.sent(dict.fromkeys(range(11, 15), OK))
        assert isolation.limit == 2, "the first batch's suspects are still to be looked at"

    @given(
        total=st.integers(min_value=2, max_value=5000),
        data=st.data(),
    )
    def test_the_culprit_is_found_alone_in_about_log2_refusals(
        self, total: int, data: st.DataObject
    ) -> None:
        """Rows 0..total-1 go in order; the broker confirms some of those before the
        culprit and refuses the rest of the send."""
        culprit = data.draw(st.integers(min_value=0, max_value=total - 1))
        isolation = Isolation()
        pending = list(range(total))
        refusals = 0
        for _ in range(100_000):
            limit = isolation.limit
            send = pending if limit is None else pending[:limit]
            if culprit not in send:
                isolation.sent(dict.fromkeys(send, OK))
                pending = pending[len(send) :]
                continue
            at = send.index(culprit)
            confirmed = data.draw(st.integers(min_value=0, max_value=at))
            unresolved = send[confirmed:]
            refusals += 1
            outcomes = dict.fromkeys(send[:confirmed], OK)
            if len(unresolved) == 1:
                outcomes[culprit] = BLAMED
                isolation.sent(outcomes)
                break
            outcomes.update(dict.fromkeys(unresolved, REFUSED))
            isolation.sent(outcomes)
            pending = pending[confirmed:]
        else:
            raise AssertionError("never found")
        assert refusals <= total.bit_length() + 1
        assert isolation.limit is None


class RefusingPublisher(ScriptedPublisher):
    """The broker closes the connection over one row and confirms nothing sent with it
    (as RabbitMQ does for a frame over frame_max)."""

    def __init__(self, culprit: int) -> None:
        super().__init__([])
        self.culprit = culprit

    def send(self, rows: Sequence[OutboxRow], *, deadline: float | None = None) -> ScriptedSending:
        ids = [r.id for r in rows]
        if self.culprit not in ids:
            self.rounds.append({})
        elif len(ids) == 1:
            self.rounds.append({self.culprit: BLAMED})
        else:
            self.rounds.append(dict.fromkeys(ids, REFUSED))
        return super().send(rows, deadline=deadline)


class TestRelayIsolates:
    def test_the_refused_row_fails_alone_and_every_other_row_goes(self) -> None:
        rows = [row(i, f"k{i}") for i in range(1, 101)]
        store = TableStore(rows)
        publisher = RefusingPublisher(culprit=64)
        relay = relay_for(store, publisher, batch_size=100)
        for _ in range(50):
            if store.gone | store.waiting == {r.id for r in rows}:
                break
            relay.run_batch()
        published = [i for done, _ in store.settled for i in done]
        failures = [f for _, failed in store.settled for f in failed]
        assert sorted(published) == [i for i in range(1, 101) if i != 64]
        assert [(f.row_id, f.dead, f.reason) for f in failures] == [
            (64, True, Reason.BROKER_REFUSED)
        ]
        sizes = [len(sent) for sent in publisher.sent]
        assert sizes[:5] == [100, 16, 16, 16, 16]
        assert len(sizes) <= 20, sizes
        assert not relay.isolating, "back to whole batches"
