"""The relay loop: claim due rows, publish them with confirms, settle, sleep until woken.

It talks to two narrow interfaces, :class:`Store` and :class:`Publisher`; the PostgreSQL
and RabbitMQ adapters implement them, and unit tests drive the loop with fakes.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    wait_random_exponential,
)

from outbox_relay.backoff import RETRY_BASE_S, RETRY_MAX_S, retry_delay_s
from outbox_relay.errors import (
    BrokerUnavailableError,
    PublishInterruptedError,
    StoreUnavailableError,
)
from outbox_relay.message import OutboxRow
from outbox_relay.ordering import held_back, resend_order
from outbox_relay.outcome import Failure, Outcome, Status

BATCH_SIZE = 500
POLL_INTERVAL_S = 0.5
# The backstop poll while idle doubles from POLL_INTERVAL_S up to this (see Relay._sleep).
IDLE_POLL_MAX_S = 5.0
MAX_ATTEMPTS = 10
MAX_PUBLISH_ROUNDS = 5
RECONNECT_MAX_S = 30.0
RECONNECT_MULTIPLIER_S = 0.5

log = structlog.get_logger("outbox_relay.relay")


class Store(Protocol):
    def connect(self) -> None: ...
    def close(self) -> None: ...
    def claim(self, limit: int) -> list[OutboxRow]: ...
    def settle(self, published: Sequence[int], failures: Sequence[Failure]) -> None: ...
    def release(self) -> None: ...
    def set_waiting(self, waiting: bool) -> float | None: ...
    def listen_fileno(self) -> int: ...
    def drain_notifications(self) -> int: ...
    def forget_waiting(self) -> None: ...


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...
    def connect(self) -> None: ...
    def close(self) -> None: ...
    def publish(self, rows: Sequence[OutboxRow]) -> dict[int, Outcome]: ...
    def missing_exchanges(self, exchanges: Collection[str]) -> dict[str, str]: ...
    def wait(self, timeout_s: float, *, wake_fd: int | None = None) -> bool: ...


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = BATCH_SIZE
    poll_interval_s: float = POLL_INTERVAL_S
    max_attempts: int = MAX_ATTEMPTS
    retry_base_s: float = RETRY_BASE_S
    retry_max_s: float = RETRY_MAX_S
    reconnect_max_s: float = RECONNECT_MAX_S


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    published: int
    failed: int
    held: int


class Relay:
    """Moves committed outbox rows to the broker. Not thread-safe: one thread runs it;
    :meth:`stop` may be called from any thread or a signal handler."""

    def __init__(
        self,
        *,
        store: Store,
        publisher: Publisher,
        settings: RelaySettings,
        random_unit: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._settings = settings
        self._random_unit = random_unit
        self._stopping = threading.Event()
        self._waiting = False
        self._store_ok = False
        self._outage: str | None = None
        self._next_due_in: float | None = None
        self._empty_polls = 0
        self.last_iteration = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Relay until :meth:`stop`; reconnects with backoff through outages."""
        retrying = Retrying(
            retry=retry_if_exception_type((StoreUnavailableError, BrokerUnavailableError)),
            wait=wait_random_exponential(
                multiplier=RECONNECT_MULTIPLIER_S, max=self._settings.reconnect_max_s
            ),
            stop=lambda _state: self._stopping.is_set(),
            sleep=self._interruptible_sleep,
            before_sleep=self._on_outage,
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._serve()
        except RetryError:
            pass  # asked to stop during an outage
        finally:
            self._shutdown()
        log.info("relay.stopped")

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _serve(self) -> None:
        self._connect()
        while not self._stopping.is_set():
            result = self.run_batch()
            self.last_iteration = time.monotonic()
            if result.claimed:
                # Keep claiming until a claim comes back empty, with the flag down: while
                # rows keep arriving, producers do not pay for NOTIFY (it serialises
                # their commits) and this loop finds their rows by itself.
                self._empty_polls = 0
                if self._waiting:
                    self._next_due_in = self._store.set_waiting(False)
                    self._waiting = False
                continue
            if not self._waiting:
                # Raise the flag, then look once more: a row committed before the flag
                # was visible sent no NOTIFY, but this claim sees it.
                self._next_due_in = self._store.set_waiting(True)
                self._waiting = True
                continue
            self._sleep()

    def _sleep(self) -> None:
        """Wait for a NOTIFY, the next scheduled row, or the backstop poll.

        The final check after raising the flag sees every row committed before the flag
        was visible, and NOTIFY reports every row whose trigger saw the flag. What is
        left is a transaction whose trigger ran before the flag was visible and that
        committed after the final check: it was already running when the relay went idle.
        The first poll comes after ``poll_interval_s`` and finds such a row; each empty
        poll after it doubles the interval up to IDLE_POLL_MAX_S, so an idle relay costs
        a transaction every few seconds instead of two a second. This relies on the
        LISTEN connection being healthy: when it dies its socket becomes readable, the
        wait returns, and reading the notifications raises StoreUnavailableError.
        """
        poll = self._settings.poll_interval_s
        timeout = min(poll * 2**self._empty_polls, max(poll, IDLE_POLL_MAX_S))
        next_due = self._next_due_in
        if next_due is not None:
            timeout = min(timeout, next_due)
        started = time.monotonic()
        woke = self._publisher.wait(timeout, wake_fd=self._store.listen_fileno())
        if next_due is not None:
            self._next_due_in = max(0.0, next_due - (time.monotonic() - started))
        if woke and self._store.drain_notifications():
            # Something was inserted: lower the flag while working (it is raised again
            # after an empty claim); this also refreshes the time of the next scheduled row.
            self._empty_polls = 0
            self._next_due_in = self._store.set_waiting(False)
            self._waiting = False
        elif not woke:
            self._empty_polls = min(self._empty_polls + 1, 16)

    def _connect(self) -> None:
        if not self._store_ok:
            self._store.connect()
            self._store_ok = True
            self._waiting = False
        if not self._publisher.connected:
            self._publisher.connect()
        if self._outage is not None:
            log.info("relay.recovered", outage=self._outage)
            self._outage = None
        self._next_due_in = None

    def _on_outage(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, StoreUnavailableError):
            self._store.close()
            self._store_ok = False
            kind = "relay.database_unavailable"
        else:
            self._publisher.close()
            kind = "relay.broker_unavailable"
        if self._outage != kind:
            log.warning(kind, error=str(error), retrying=True)
            self._outage = kind

    def _shutdown(self) -> None:
        if self._store_ok:
            with contextlib.suppress(StoreUnavailableError):
                self._store.forget_waiting()
        self._store.close()
        self._publisher.close()
        self._store_ok = False

    # -- one batch ----------------------------------------------------------------------

    def run_batch(self) -> BatchResult:
        """Claim, publish and settle one batch. Raises the *Unavailable errors after
        settling what the broker already confirmed."""
        rows = self._store.claim(self._settings.batch_size)
        if not rows:
            self._store.release()
            return BatchResult(0, 0, 0, 0)
        try:
            outcomes = self._publish(rows)
        except PublishInterruptedError as exc:
            self._settle(rows, exc.outcomes)
            raise
        except BaseException:
            self._store.release()
            raise
        return self._settle(rows, outcomes)

    def _publish(self, rows: Sequence[OutboxRow]) -> dict[int, Outcome]:
        """Publish the batch; publish again what a closed channel left unsent.

        Rows to a missing exchange fail before anything is sent, and every row that
        would go out after a failed row of its key waits in the table instead.
        """
        missing = self._publisher.missing_exchanges({row.exchange for row in rows})
        outcomes: dict[int, Outcome] = {
            row.id: Outcome.failed(missing[row.exchange]) for row in rows if row.exchange in missing
        }
        unsent = [row.id for row in rows if row.id not in outcomes]
        for _ in range(MAX_PUBLISH_ROUNDS):
            failed = [i for i, o in outcomes.items() if o.status is Status.FAILED]
            pending = resend_order(rows, unsent, held_back(rows, failed))
            if not pending:
                break
            try:
                outcomes.update(self._publisher.publish(pending))
            except PublishInterruptedError as exc:
                raise PublishInterruptedError(str(exc), {**outcomes, **exc.outcomes}) from exc
            unsent = [i for i, o in outcomes.items() if o.status is Status.UNSENT]
        return outcomes

    def _settle(self, rows: Sequence[OutboxRow], outcomes: Mapping[int, Outcome]) -> BatchResult:
        published: list[int] = []
        failures: list[Failure] = []
        for row in rows:
            outcome = outcomes.get(row.id)
            if outcome is None or outcome.status is Status.UNSENT:
                continue
            if outcome.status is Status.CONFIRMED:
                published.append(row.id)
                continue
            failures.append(self._failure(row, outcome.error or "unknown error"))
        self._store.settle(published, failures)
        held = len(rows) - len(published) - len(failures)
        if failures:
            for failure in failures:
                log.warning(
                    "relay.row_dead" if failure.dead else "relay.row_failed",
                    row_id=failure.row_id,
                    error=failure.error,
                    retry_in_s=None if failure.dead else round(failure.retry_in_s, 3),
                )
        log.debug(
            "relay.batch_published", published=len(published), failed=len(failures), held=held
        )
        return BatchResult(len(rows), len(published), len(failures), held)

    def _failure(self, row: OutboxRow, error: str) -> Failure:
        attempt = row.attempts + 1
        dead = attempt >= self._settings.max_attempts
        delay = retry_delay_s(
            attempt,
            base_s=self._settings.retry_base_s,
            max_s=self._settings.retry_max_s,
            jitter=self._random_unit() * 0.999,
        )
        return Failure(row_id=row.id, error=error, retry_in_s=0.0 if dead else delay, dead=dead)
