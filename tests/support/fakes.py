"""In-memory stand-ins for the relay's store and publisher (outbox_relay.relay.ports).

:class:`FakeStore` answers every claim with the same rows; :class:`TableStore` behaves
as the outbox table does (tests/integration/test_store_contract.py runs one suite
against it and against the PostgreSQL store); :class:`ScriptedPublisher` answers each
batch with the next scripted round of outcomes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import uuid
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from outbox_relay.amqp_fields import DEFAULT_FRAME_MAX_BYTES
from outbox_relay.errors import PublishInterruptedError
from outbox_relay.message import OutboxRow
from outbox_relay.publisher import refusal
from outbox_relay.relay import Relay, RelaySettings
from outbox_relay.relay.outcome import Failure, Outcome
from outbox_relay.relay.partitions import Leases
from outbox_relay.relay.ports import SendResult
from outbox_relay.relay.wakeup import Notices


def row(row_id: int, key: str | None = None, exchange: str = "ex", attempts: int = 0) -> OutboxRow:
    return OutboxRow(
        id=row_id,
        message_id=str(uuid.uuid4()),
        exchange=exchange,
        routing_key="rk",
        payload=b"{}",
        content_type="application/json",
        headers={},
        partition_key=key,
        created_at=dt.datetime.now(tz=dt.timezone.utc),
        attempts=attempts,
    )


class FakeClaim:
    def __init__(
        self, store: FakeStore, rows: list[OutboxRow], locked: list[OutboxRow] | None = None
    ) -> None:
        self.store = store
        self.rows = rows
        self.locked = rows if locked is None else locked  # rows and those left over
        self.left_over = len(self.locked) - len(rows)
        self.ended = False

    def settle(self, published: Sequence[int], failures: Sequence[Failure]) -> None:
        assert not self.ended, "a claim is settled once, and not after its release"
        self.ended = True
        self.store.settled.append((list(published), list(failures)))
        self.store.unlock(self.locked, published, failures)

    def release(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.store.released += 1
        self.store.unlock(self.locked)


class FakeStore:
    """Every claim returns the same rows."""

    def __init__(self, rows: list[OutboxRow]) -> None:
        self.rows = rows
        self.settled: list[tuple[list[int], list[Failure]]] = []
        self.released = 0

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def heartbeat(self) -> Leases:
        return Leases(owned=(0,), live=("me",), partitions=1)

    def release_leases(self) -> None: ...
    def claim(self, limit: int, max_bytes: int = 1 << 30) -> FakeClaim:
        return FakeClaim(self, self.rows[:limit])

    def unlock(
        self,
        rows: Sequence[OutboxRow],
        published: Sequence[int] = (),
        failures: Sequence[Failure] = (),
    ) -> None: ...

    def set_waiting(self, waiting: bool) -> float | None:
        return None

    def next_due_in(self) -> float | None:
        return None

    def listen_fileno(self) -> int:
        return -1

    def notices_waiting(self) -> bool:
        return False

    def drain_notifications(self) -> Notices:
        return Notices(0, scheduled=False)

    def forget_waiting(self) -> None: ...


class TableStore(FakeStore):
    """Claims behave as on the table: locked rows are skipped, settled rows are gone,
    failed rows wait for their retry and hold back later rows of their key, and a claim
    takes rows up to its byte budget (the first always) and locks the rest of its limit."""

    def __init__(self, rows: list[OutboxRow]) -> None:
        super().__init__(rows)
        self.locked: set[int] = set()
        self.gone: set[int] = set()
        self.waiting: set[int] = set()
        self.claims: list[list[int]] = []

    def claim(self, limit: int, max_bytes: int = 1 << 30) -> FakeClaim:
        first_waiting: dict[str, int] = {}
        for r in self.rows:
            if r.id in self.waiting and r.partition_key is not None:
                first_waiting.setdefault(r.partition_key, r.id)
        due = [
            r
            for r in self.rows
            if r.id not in self.locked | self.gone | self.waiting
            and first_waiting.get(r.partition_key or "", r.id) >= r.id
        ][:limit]
        running = itertools.accumulate(len(r.payload) for r in due)
        taken = [
            r
            for n, (r, total) in enumerate(zip(due, running, strict=True))
            if n == 0 or total <= max_bytes
        ]
        self.locked |= {r.id for r in due}
        self.claims.append([r.id for r in taken])
        return FakeClaim(self, taken, due)

    def unlock(
        self,
        rows: Sequence[OutboxRow],
        published: Sequence[int] = (),
        failures: Sequence[Failure] = (),
    ) -> None:
        self.locked -= {r.id for r in rows}
        self.gone |= set(published)
        self.waiting |= {f.row_id for f in failures}


class ScriptedSending:
    def __init__(self, publisher: ScriptedPublisher, rows: Sequence[OutboxRow]) -> None:
        self.publisher = publisher
        self.ids = [r.id for r in rows]
        self.asked = False  # as in Publisher, abandoning a batch whose outcomes came does nothing
        self.interrupted: PublishInterruptedError | None = None  # cut short while sending

    def flush(self) -> bool:
        return self.publisher.flushes

    def outcomes(self) -> SendResult:
        self.publisher.events.append(("outcomes", self.ids))
        self.asked = True
        answer = self.publisher.rounds.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, SendResult):
            return answer
        return SendResult({i: answer.get(i, Outcome.confirmed()) for i in self.ids})

    def abandon(self) -> None:
        if not self.asked:
            self.publisher.events.append(("abandon", self.ids))


class ScriptedPublisher:
    """Each batch sent is answered, when its outcomes are asked for, with the next
    scripted round: outcomes (confirmed unless said), a SendResult as it is, or an
    exception raised."""

    def __init__(
        self,
        rounds: list[dict[int, Outcome] | SendResult | Exception],
        missing: dict[str, str] | None = None,
    ) -> None:
        self.rounds = rounds
        self.sent: list[list[int]] = []
        self.events: list[tuple[str, list[int]]] = []  # sends, outcomes asked, abandons
        self.flushes = True  # whether a batch's frames reach the socket (Sending.flush)
        self.missing = missing or {}
        self.exchanges_checked: set[str] = set()
        self.failing: tuple[int, Exception] | None = None  # see fail_after

    def fail_after(self, sends: int, error: Exception) -> None:
        """Every send after the first ``sends`` raises ``error`` (no channel, a lost
        connection)."""
        self.failing = (sends, error)

    @property
    def connected(self) -> bool:
        return True

    blocked = False

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def send(self, rows: Sequence[OutboxRow], *, deadline: float | None = None) -> ScriptedSending:
        if self.failing is not None and len(self.sent) >= self.failing[0]:
            raise self.failing[1]
        self.sent.append([r.id for r in rows])
        self.events.append(("send", [r.id for r in rows]))
        return ScriptedSending(self, rows)

    def refused(self, rows: Sequence[OutboxRow]) -> dict[int, Outcome]:
        refusals = {r.id: refusal(r, frame_max=DEFAULT_FRAME_MAX_BYTES) for r in rows}
        return {i: outcome for i, outcome in refusals.items() if outcome is not None}

    def missing_exchanges(self, exchanges: Collection[str]) -> dict[str, str]:
        self.exchanges_checked.update(exchanges)
        return {e: self.missing[e] for e in exchanges if e in self.missing}

    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool:
        return False


_entered = contextlib.ExitStack()


def relay_for(
    store: FakeStore, publisher: ScriptedPublisher, *, enter: bool = True, **settings: Any
) -> Relay:
    """A relay on the fakes, with jitter fixed at the middle. Entered (connected, holding
    its one partition, its store thread started) unless ``enter`` is false; the tier's
    conftest leaves it after the test (:func:`leave_relays`)."""
    relay = Relay(
        store=store,
        publisher=publisher,
        settings=RelaySettings(**settings),
        random_unit=lambda: 0.5,
    )
    if enter:
        _entered.enter_context(relay)
    return relay


@contextlib.contextmanager
def leave_relays() -> Iterator[None]:
    """Leave the relays :func:`relay_for` entered meanwhile."""
    try:
        yield
    finally:
        _entered.close()
