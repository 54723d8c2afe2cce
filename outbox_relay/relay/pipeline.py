"""The batch pipeline: claim due rows, publish them, settle them; two batches out.

A round of batches runs while claims come back full. While one batch is out, the store
thread claims the next one on a connection of its own and it goes out behind the first
before that one is confirmed: at most two batches are out at once, and a crash re-sends
at most those two. Per-key order holds across them (:mod:`outbox_relay.relay.ordering`):
a row that would go out after an older, unconfirmed row of its key waits in the table.
Rows the broker refuses are found by sending fewer at a time
(:mod:`outbox_relay.relay.isolation`); a claim is settled by
:mod:`outbox_relay.relay.settling`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from outbox_relay.errors import (
    BrokerError,
    BrokerUnavailableError,
    PublishInterruptedError,
    StoreError,
)
from outbox_relay.message import OutboxRow
from outbox_relay.relay.isolation import Isolation
from outbox_relay.relay.leases import LeaseHold
from outbox_relay.relay.ordering import held_back, resend_order, waiting_behind
from outbox_relay.relay.outcome import Outcome, Reason, Status
from outbox_relay.relay.ports import BatchResult, Claim, Publisher, RelayObserver, Sending, Store
from outbox_relay.relay.settings import MAX_PUBLISH_ROUNDS, RelaySettings
from outbox_relay.relay.settling import Settler


class BatchPipeline:
    """Claims, publishes and settles batches for the loop, on its thread; claims ahead on
    :attr:`store_thread` when there is one (see :meth:`run_batches`)."""

    def __init__(
        self,
        *,
        store: Store,
        publisher: Publisher,
        settings: RelaySettings,
        observer: RelayObserver,
        leases: LeaseHold,
        stopping: threading.Event,
        claim_ahead_allowed: Callable[[float], bool],
        random_unit: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._settings = settings
        self._leases = leases
        self._stopping = stopping
        self._claim_ahead_allowed = claim_ahead_allowed
        self._clock = clock
        # While looking for the row the broker refused, sends carry fewer rows and no
        # batch goes out ahead of another (see outbox_relay.relay.isolation).
        self._isolation = Isolation()
        # Claims the next batch while the loop publishes one (see run_batches).
        self.store_thread: ThreadPoolExecutor | None = None
        self._settler = Settler(settings=settings, observer=observer, random_unit=random_unit)

    @property
    def isolating(self) -> bool:
        """Sending fewer rows at a time to find one the broker refuses."""
        return self._isolation.limit is not None

    def log_repeated(self) -> None:
        """Log the per-row failures counted since their interval began."""
        self._settler.log_repeated()

    def run_batch(self) -> BatchResult:
        """Claim, publish and settle one batch. Raises the *Unavailable errors after
        settling what the broker already confirmed."""
        claim = self._claim()
        if claim is None:
            return BatchResult(0, 0, 0, 0)
        sent = self._send_claim(claim, ())
        return self._settler.settle(claim, self._confirm_claim(claim, sent))

    def run_batches(self) -> BatchResult:
        """Relay batches back to back for as long as they come back full; the totals.

        While a full batch is out, the store thread claims the next one on a connection
        of its own (the rows in flight are locked, so the claim skips them), and the
        next one goes out behind it before the first is confirmed. So the broker always
        has messages to take while the relay builds the next batch's frames, waits for
        confirms and settles: at most two batches are out at once, and a crash re-sends
        at most those two.

        Per-key order: a batch with a row that would go out after an older row of its
        key in the batch still out goes only after that batch is confirmed and settled,
        and then its rows that follow an unconfirmed row of their key stay in the table
        (:func:`waiting_behind`). A batch cut short by its byte budget is not full, so
        nothing is claimed ahead of it: a claim made then would skip the rows it left
        over, still locked, and could publish a later row of their key first. They come
        first in the next claim.
        """
        claim = self._claim()
        if claim is None:
            return BatchResult(0, 0, 0, 0)
        pool = self.store_thread
        totals = BatchResult(0, 0, 0, 0)
        waiting: Collection[int] = ()
        sent: _Sent | None = None  # the claim's first round, once it has gone out
        while True:
            job = pool.submit(self._claim) if pool and self._may_claim_ahead(claim) else None
            following: Claim | None = None
            ahead: _Sent | None = None
            failed: StoreError | BrokerError | None = None  # raised once the claim is settled
            try:
                if sent is None:
                    sent = self._send_claim(claim, waiting)
                if job is not None and sent.flush():
                    try:
                        following, job = self._claimed_ahead(job), None
                        ahead = self._send_ahead(following, claim)
                    except (StoreError, BrokerError) as exc:
                        failed = exc
                outcomes = self._confirm_claim(claim, sent)
                totals += self._settler.settle(claim, outcomes)
                if job is not None and failed is None:
                    following, job = self._claimed_ahead(job), None
            except BaseException:
                try:
                    _drop(following, ahead)
                    _drop(claim, sent)
                finally:
                    _abandon(job)
                raise
            if failed is not None:
                _abandon(job)
                raise failed
            if following is None:
                return totals
            unconfirmed = [row for row in claim.rows if not _confirmed(outcomes.get(row.id))]
            waiting = waiting_behind(following.rows, unconfirmed)
            claim, sent = following, ahead

    def _claim(self) -> Claim | None:
        if not self._leases.may_claim(self._clock()):
            return None
        claim = self._store.claim(self._settings.batch_size, self._settings.batch_bytes)
        if not claim.rows:
            claim.release()
            return None
        return claim

    def _send_ahead(self, following: Claim | None, out: Claim) -> _Sent | None:
        """Send the next batch while ``out`` awaits its confirms, unless a row of it
        would go out after an older row of its key in ``out``: it then waits until
        ``out`` is settled."""
        if following is None or waiting_behind(following.rows, out.rows):
            return None
        ahead = self._send_claim(following, ())
        try:
            ahead.flush()
        except BaseException:
            _drop(following, ahead)
            raise
        return ahead

    def _claimed_ahead(self, job: Future[Claim | None]) -> Claim | None:
        """The claim made ahead; released when the relay is stopping meanwhile."""
        following = job.result()
        if following is not None and self._stopping.is_set():
            following.release()
            return None
        return following

    def _may_claim_ahead(self, claim: Claim) -> bool:
        """Claim the next batch during this one only when this one is full (a backlog),
        never when its byte budget cut it short (see run_batches), and not when a
        heartbeat is due: heartbeats run between rounds of batches."""
        return (
            len(claim.rows) >= self._settings.batch_size
            and not claim.left_over
            and self._isolation.limit is None
            and not self._stopping.is_set()
            and self._claim_ahead_allowed(self._clock())
        )

    def _send_claim(self, claim: Claim, waiting: Collection[int]) -> _Sent:
        """Send the claim's rows but ``waiting`` (see :meth:`_first_round`); when they
        cannot go, raise once the rows that failed before sending are settled."""
        with self._releasing_on_error(claim):
            outcomes, pending = self._first_round(claim.rows, waiting)
        if not pending:
            return _Sent(outcomes, None)
        try:
            sending = self._publisher.send(pending, deadline=self._leases.deadline)
        except BrokerUnavailableError as exc:
            raise self._ended(claim, outcomes, _interruption(exc)) from exc
        except BaseException:
            claim.release()
            raise
        if sending.interrupted is not None:
            # Cut short while sending (a batch past the unconfirmed-bytes bound waits for
            # its first confirms): what the broker confirmed by then is settled now, as
            # the batch sent ahead is otherwise released whole when the one before it
            # fails on the same lost connection.
            result = sending.outcomes()
            raise self._ended(claim, {**outcomes, **result.outcomes}, sending.interrupted)
        return _Sent(outcomes, sending)

    def _confirm_claim(self, claim: Claim, sent: _Sent) -> dict[int, Outcome]:
        """The outcomes of the claim's rows (see :meth:`_confirm`); when publishing was
        interrupted, raise once those known are settled."""
        with self._releasing_on_error(claim):
            outcomes, interrupted = self._confirm(claim.rows, sent)
        if interrupted is not None:
            raise self._ended(claim, outcomes, interrupted)
        return outcomes

    @contextlib.contextmanager
    def _releasing_on_error(self, claim: Claim) -> Iterator[None]:
        """Release the claim (if it has not ended) when anything is raised."""
        try:
            yield
        except BaseException:
            claim.release()
            raise

    def _ended(
        self, claim: Claim, known: Mapping[int, Outcome], interrupted: PublishInterruptedError
    ) -> PublishInterruptedError:
        """``interrupted``, once the ``known`` outcomes are settled (or the claim released
        when none is), so that they hold before the relay reconnects."""
        if known:
            self._settler.settle(claim, known)
        else:
            claim.release()
        return interrupted

    def _first_round(
        self, rows: Sequence[OutboxRow], waiting: Collection[int]
    ) -> tuple[dict[int, Outcome], Sequence[OutboxRow]]:
        """The first round: rows AMQP or the broker cannot carry, then rows to a missing
        exchange, fail before anything is sent, every row that would go out after a
        failed row of its key waits in the table, as do the ``waiting`` rows, and the
        rest are to go out (returned). The exchange check only sees names AMQP can carry."""
        self._isolation.claimed([row.id for row in rows])
        candidates = [row for row in rows if row.id not in waiting]
        outcomes: dict[int, Outcome] = dict(self._publisher.refused(candidates))
        candidates = [row for row in candidates if row.id not in outcomes]
        missing = self._publisher.missing_exchanges({row.exchange for row in candidates})
        outcomes.update(
            (row.id, Outcome.failed(missing[row.exchange], Reason.MISSING_EXCHANGE))
            for row in candidates
            if row.exchange in missing
        )
        unsent = [row.id for row in candidates if row.id not in outcomes]
        pending = self._within_limit(
            resend_order(rows, unsent, held_back(rows, list(outcomes))), outcomes
        )
        return outcomes, pending

    def _confirm(
        self, rows: Sequence[OutboxRow], sent: _Sent
    ) -> tuple[dict[int, Outcome], PublishInterruptedError | None]:
        """Wait for the first round's confirms; publish again what was left unsent (by
        a closed channel, or behind a message id already out), in up to
        MAX_PUBLISH_ROUNDS rounds in all. The outcomes, and the interruption that cut
        this short, if one did: the outcomes are then those known."""
        outcomes = dict(sent.outcomes)
        sending = sent.sending
        rounds = 1
        try:
            while sending is not None:
                result = sending.outcomes()
                outcomes.update(result.outcomes)
                if result.interrupted is not None:
                    return outcomes, result.interrupted
                self._isolation.sent(result.outcomes)
                unsent = [i for i, o in outcomes.items() if o.status is Status.UNSENT]
                failed = [i for i, o in outcomes.items() if o.status is Status.FAILED]
                pending = self._within_limit(
                    resend_order(rows, unsent, held_back(rows, failed)), outcomes
                )
                if not pending or rounds >= MAX_PUBLISH_ROUNDS:
                    break
                sending = self._publisher.send(pending, deadline=self._leases.deadline)
                rounds += 1
        except BrokerUnavailableError as exc:
            # Opening a channel for the next round can fail too: settle the first's.
            return outcomes, _interruption(exc)
        return outcomes, None

    def _within_limit(
        self, pending: Sequence[OutboxRow], outcomes: dict[int, Outcome]
    ) -> Sequence[OutboxRow]:
        """The first rows of ``pending`` that the send limit lets go; the others are
        UNSENT in ``outcomes`` (and go in a later round or claim)."""
        limit = self._isolation.limit
        if limit is None or len(pending) <= limit:
            return pending
        for row in pending[limit:]:
            outcomes.setdefault(row.id, Outcome.unsent())
        return pending[:limit]


@dataclass(frozen=True)
class _Sent:
    """A batch's first round: the rows that failed before sending, and those that went."""

    outcomes: Mapping[int, Outcome]
    sending: Sending | None

    def flush(self) -> bool:
        return self.sending is None or self.sending.flush()

    def abandon(self) -> None:
        if self.sending is not None:
            self.sending.abandon()


def _drop(claim: Claim | None, sent: _Sent | None) -> None:
    """Give up a claim whose rows may be out: ignore their confirms and release it
    (nothing happens to a claim that has ended). Its rows go again later."""
    if sent is not None:
        sent.abandon()
    if claim is not None:
        with contextlib.suppress(StoreError):
            claim.release()


def _interruption(exc: BrokerUnavailableError) -> PublishInterruptedError:
    """``exc``, a failure to send or to confirm a batch, as its interruption."""
    interrupted = PublishInterruptedError(str(exc))
    interrupted.__cause__ = exc
    return interrupted


def _confirmed(outcome: Outcome | None) -> bool:
    return outcome is not None and outcome.status is Status.CONFIRMED


def _abandon(job: Future[Claim | None] | None) -> None:
    """Wait for the claim made ahead for a batch whose publishing failed, and release it.
    Its own error, whatever it is, gives way to the error being raised."""
    if job is None:
        return
    try:
        following = job.result()
    except Exception:  # noqa: BLE001 - the error being raised is the one to report
        return
    if following is not None:
        with contextlib.suppress(StoreError):
            following.release()
