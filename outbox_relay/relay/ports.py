"""The relay's two narrow doors, a store and a publisher, and what it tells an observer.

The PostgreSQL and RabbitMQ adapters implement :class:`Store` and :class:`Publisher`;
tests/support/fakes.py holds in-memory ones, and tests/integration/test_store_contract.py
runs one suite against the fake and the real store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from outbox_relay.errors import PublishInterruptedError
from outbox_relay.message import OutboxRow
from outbox_relay.relay.outcome import Failure, Outcome
from outbox_relay.relay.partitions import Leases
from outbox_relay.relay.wakeup import Notices


class Claim(Protocol):
    """Rows locked by one claim; ``settle`` or ``release`` ends it, and ``release`` of an
    ended claim does nothing. It also locked ``left_over`` rows that did not fit the
    batch's byte budget: they stay in the table, locked until the claim ends."""

    @property
    def rows(self) -> Sequence[OutboxRow]: ...
    @property
    def left_over(self) -> int: ...
    def settle(self, published: Sequence[int], failures: Sequence[Failure]) -> None: ...
    def release(self) -> None: ...


class Store(Protocol):
    """The outbox table, the partition leases and the wake-up flag.

    ``heartbeat`` and ``release_leases`` run on a connection no claim uses (the LISTEN
    connection), so renewing a lease can never commit or roll back an open claim. A
    claim holds its partitions' leases (FOR SHARE): a heartbeat waits for the claims
    open to end, so the relay heartbeats between rounds of batches, with none open.
    """

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def heartbeat(self) -> Leases: ...
    def release_leases(self) -> None: ...
    def claim(self, limit: int, max_bytes: int) -> Claim: ...
    def set_waiting(self, waiting: bool) -> float | None: ...
    def next_due_in(self) -> float | None: ...
    def listen_fileno(self) -> int: ...
    def notices_waiting(self) -> bool: ...
    def drain_notifications(self) -> Notices: ...
    def forget_waiting(self) -> None: ...


@dataclass(frozen=True)
class SendResult:
    """What became of the rows of a batch sent (:meth:`Sending.outcomes`), by row id.

    ``interrupted`` is set when the connection was lost or stalled, or the lease ran
    out, before every confirm came: ``outcomes`` then holds only what the broker
    confirmed or refused before that, so those rows can still be settled; every other
    row stays unpublished, and the caller raises ``interrupted`` once it settled them.
    """

    outcomes: Mapping[int, Outcome]
    interrupted: PublishInterruptedError | None = None


class Sending(Protocol):
    """Rows handed to the broker, their confirms perhaps still to come; ``interrupted``
    is set when sending them was cut short already (``outcomes()`` then says what the
    broker confirmed before that)."""

    @property
    def interrupted(self) -> PublishInterruptedError | None: ...
    def flush(self) -> bool: ...
    def outcomes(self) -> SendResult: ...
    def abandon(self) -> None: ...


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...
    @property
    def blocked(self) -> bool: ...
    def connect(self) -> None: ...
    def close(self) -> None: ...
    def send(self, rows: Sequence[OutboxRow], *, deadline: float | None = None) -> Sending: ...
    def refused(self, rows: Sequence[OutboxRow]) -> dict[int, Outcome]: ...
    def missing_exchanges(self, exchanges: Collection[str]) -> dict[str, str]: ...
    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool: ...


class RelayObserver(Protocol):
    """Told what the loop does; the metrics implement it."""

    def batch_settled(
        self,
        *,
        claimed: int,
        published: Sequence[OutboxRow],
        failures: Sequence[Failure],
        now: dt.datetime,
    ) -> None: ...
    def iteration(self, now: dt.datetime) -> None: ...
    def partitions(self, owned: int) -> None: ...
    def outage(self, service: str) -> None: ...
    def dependency(self, service: str, *, up: bool, refused: bool) -> None: ...


class NullObserver:
    """A :class:`RelayObserver` that ignores everything; subclass it to watch some events."""

    def batch_settled(
        self,
        *,
        claimed: int,
        published: Sequence[OutboxRow],
        failures: Sequence[Failure],
        now: dt.datetime,
    ) -> None:
        pass

    def iteration(self, now: dt.datetime) -> None:
        pass

    def partitions(self, owned: int) -> None:
        pass

    def outage(self, service: str) -> None:
        pass

    def dependency(self, service: str, *, up: bool, refused: bool) -> None:
        pass


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    published: int
    failed: int
    held: int

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(
            self.claimed + other.claimed,
            self.published + other.published,
            self.failed + other.failed,
            self.held + other.held,
        )
