"""The relay loop driven through fakes of the store and the publisher."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence

import pytest
from structlog.testing import capture_logs

from outbox_relay.errors import PublishInterruptedError
from outbox_relay.message import OutboxRow
from outbox_relay.outcome import Failure, Outcome, Reason
from outbox_relay.partitions import Leases
from outbox_relay.relay import Relay, RelaySettings


def row(row_id: int, key: str | None = None, exchange: str = "ex", attempts: int = 0) -> OutboxRow:
    return OutboxRow(
        id=row_id,
        message_id=uuid.uuid4(),
        exchange=exchange,
        routing_key="rk",
        payload=b"{}",
        content_type="application/json",
        headers={},
        partition_key=key,
        created_at=dt.datetime.now(tz=dt.timezone.utc),
        attempts=attempts,
    )


class FakeStore:
    def __init__(self, rows: list[OutboxRow]) -> None:
        self.rows = rows
        self.settled: list[tuple[list[int], list[Failure]]] = []
        self.released = 0

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def heartbeat(self) -> Leases:
        return Leases(owned=(0,), live=("me",), partitions=1)

    def release_leases(self) -> None: ...
    def claim(self, limit: int) -> list[OutboxRow]:
        return self.rows[:limit]

    def settle(self, published: Sequence[int], failures: Sequence[Failure]) -> None:
        self.settled.append((list(published), list(failures)))

    def release(self) -> None:
        self.released += 1

    def set_waiting(self, waiting: bool) -> float | None:
        return None

    def listen_fileno(self) -> int:
        return -1

    def drain_notifications(self) -> int:
        return 0

    def forget_waiting(self) -> None: ...


class ScriptedPublisher:
    """Each publish() call answers with the next scripted round of outcomes."""

    def __init__(
        self, rounds: list[dict[int, Outcome] | Exception], missing: dict[str, str] | None = None
    ) -> None:
        self.rounds = rounds
        self.sent: list[list[int]] = []
        self.missing = missing or {}

    @property
    def connected(self) -> bool:
        return True

    blocked = False

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def publish(
        self, rows: Sequence[OutboxRow], *, deadline: float | None = None
    ) -> dict[int, Outcome]:
        self.sent.append([r.id for r in rows])
        answer = self.rounds.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {r.id: answer.get(r.id, Outcome.confirmed()) for r in rows}

    def missing_exchanges(self, exchanges: Collection[str]) -> dict[str, str]:
        return {e: self.missing[e] for e in exchanges if e in self.missing}

    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool:
        return False


def relay_for(store: FakeStore, publisher: ScriptedPublisher, **settings: float) -> Relay:
    relay = Relay(
        store=store,
        publisher=publisher,
        settings=RelaySettings(**settings),
        random_unit=lambda: 0.5,
    )
    relay._heartbeat()  # holds its one partition, as after the first heartbeat of run()
    return relay


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

    def test_a_row_amqp_cannot_carry_is_dead_at_its_first_attempt(self) -> None:
        store = FakeStore([row(1, "a"), row(2, "b")])
        unencodable = Outcome.failed("routing_key is 300 bytes", Reason.UNENCODABLE)
        unroutable = Outcome.failed("unroutable", Reason.UNROUTABLE)
        relay_for(store, ScriptedPublisher([{1: unencodable, 2: unroutable}])).run_batch()
        [(_, failures)] = store.settled
        assert [(f.row_id, f.dead) for f in failures] == [(1, True), (2, False)]

    def test_an_interrupted_batch_settles_what_was_confirmed_and_keeps_the_rest(self) -> None:
        store = FakeStore([row(1), row(2), row(3)])
        interrupted = PublishInterruptedError("connection lost", {1: Outcome.confirmed()})
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

    def test_rounds_are_bounded_when_the_channel_keeps_dying(self) -> None:
        store = FakeStore([row(1), row(2)])
        always_unsent = [{1: Outcome.unsent(), 2: Outcome.unsent()} for _ in range(10)]
        publisher = ScriptedPublisher(always_unsent)  # type: ignore[arg-type]
        relay_for(store, publisher).run_batch()
        assert len(publisher.sent) == 5
        assert store.settled == [([], [])]
