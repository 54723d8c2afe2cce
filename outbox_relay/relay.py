"""The relay loop: claim due rows, publish them with confirms, settle, sleep until woken.

It talks to two narrow interfaces, :class:`Store` and :class:`Publisher`; the PostgreSQL
and RabbitMQ adapters implement them, and unit tests drive the loop with fakes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import structlog
from tenacity import RetryCallState, RetryError

from outbox_relay.backoff import RETRY_BASE_S, RETRY_MAX_S, retry_delay_s
from outbox_relay.errors import (
    BrokerError,
    BrokerUnavailableError,
    MisconfiguredError,
    PublishInterruptedError,
    StoreError,
    StoreUnavailableError,
)
from outbox_relay.isolation import Isolation
from outbox_relay.log_summary import RepeatedEvents
from outbox_relay.message import OutboxRow
from outbox_relay.misconfiguration import UNHEALTHY_AFTER_S, Refusals
from outbox_relay.ordering import held_back, resend_order, waiting_behind
from outbox_relay.outcome import Failure, Outcome, Reason, Status
from outbox_relay.partitions import Leases
from outbox_relay.reconnect import RECONNECT_MAX_S, ReconnectBackoff, reconnecting
from outbox_relay.wakeup import BUSY_POLL_S, LATE_LOOK_S, Notices, Step, WakeUp

# Draining a backlog of 512 B rows against raw pika at its best (medians of three
# interleaved rounds, 2026-11-29): 1000 rows 0.722 x, 4000 rows 0.776 x, 8000 rows 0.782 x.
BATCH_SIZE = 4000
# A batch's payloads stop at this many bytes (its first row always goes): what a batch
# holds in memory does not grow with the rows' size. 4000 rows of 512 B take 2 MB.
BATCH_BYTES = 8 * 1024 * 1024
LEASE_TTL_S = 8.0
HEARTBEAT_INTERVAL_S = 2.0
# Stop publishing this long before the lease runs out by the relay's own clock.
LEASE_SAFETY_MARGIN_S = 1.0
POLL_INTERVAL_S = 0.5
# The backstop poll while idle doubles from POLL_INTERVAL_S up to this (see Relay._sleep).
IDLE_POLL_MAX_S = 5.0
# Rows found by the backstop poll, not announced by a NOTIFY, are logged at most this often.
UNANNOUNCED_LOG_INTERVAL_S = 600.0
MAX_ATTEMPTS = 10
MAX_PUBLISH_ROUNDS = 5
# /healthz fails when the loop has not gone round for this long (and is not merely
# waiting on a blocked broker or an outage).
LIVENESS_LIMIT_S = 60.0

log = structlog.get_logger("outbox_relay.relay")


def new_relay_id() -> str:
    """host:pid:random, unique per process start and readable in `outbox-relay status`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


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
    def connect(self) -> None: ...
    def close(self) -> None: ...
    def heartbeat(self) -> Leases: ...
    def release_leases(self) -> None: ...
    def claim(self, limit: int, max_bytes: int) -> Claim: ...
    def set_waiting(self, waiting: bool) -> float | None: ...
    def next_due_in(self) -> float | None: ...
    def listen_fileno(self) -> int: ...
    def drain_notifications(self) -> Notices: ...
    def forget_waiting(self) -> None: ...


class Sending(Protocol):
    """Rows handed to the broker, their confirms perhaps still to come."""

    def flush(self) -> bool: ...
    def outcomes(self) -> dict[int, Outcome]: ...
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
class RelaySettings:
    batch_size: int = BATCH_SIZE
    batch_bytes: int = BATCH_BYTES
    poll_interval_s: float = POLL_INTERVAL_S
    max_attempts: int = MAX_ATTEMPTS
    retry_base_s: float = RETRY_BASE_S
    retry_max_s: float = RETRY_MAX_S
    reconnect_max_s: float = RECONNECT_MAX_S
    lease_ttl_s: float = LEASE_TTL_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    # /healthz fails once the database or the broker refused the configuration this long.
    unhealthy_after_s: float = UNHEALTHY_AFTER_S


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


class Relay:
    """Moves committed outbox rows to the broker. Not thread-safe: one thread runs it
    (while :meth:`run` lends store calls to a helper thread of its own, see
    :meth:`run_batches`); :meth:`stop` may be called from any thread or a signal handler."""

    def __init__(
        self,
        *,
        store: Store,
        publisher: Publisher,
        settings: RelaySettings,
        random_unit: Callable[[], float] = random.random,
        observer: RelayObserver | None = None,
    ) -> None:
        self._store = store
        self._observer: RelayObserver = observer or NullObserver()
        self._publisher = publisher
        self._settings = settings
        self._random_unit = random_unit
        self._stopping = threading.Event()
        self._stop_reason = ""
        self._store_ok = False
        self._outage: str | None = None
        self._due_at: float | None = None  # monotonic; when the next scheduled row is due
        # That row is due, or a delayed row was announced: read when the next one is due.
        self._due_unknown = False
        self._look_until: float | None = None  # monotonic; see Step.RAISE_FLAG
        self._notified = False  # the last sleep ended with a NOTIFY
        self._polled = False  # the last sleep ended at the backstop poll
        # The last sleep ended for the heartbeat alone: heartbeat, and sleep on.
        self._heartbeat_only = False
        self._poll_at: float | None = None  # monotonic; the next backstop poll
        self._unannounced_logged_at: float | None = None
        self._leases: Leases | None = None
        self._lease_deadline = 0.0  # monotonic; past it, this relay may not publish
        self._next_heartbeat = 0.0
        self._empty_polls = 0
        self._wakeup = WakeUp(batch_size=settings.batch_size)
        # While looking for the row the broker refused, sends carry fewer rows and no
        # batch goes out ahead of another (see outbox_relay.isolation).
        self._isolation = Isolation()
        # Restarts from its base once connected again (see _connect).
        self._backoff = ReconnectBackoff(max_s=settings.reconnect_max_s, random_unit=random_unit)
        # Claims the next batch while the loop publishes one (see run_batches).
        self._store_thread: ThreadPoolExecutor | None = None
        self.last_iteration = time.monotonic()
        # Connected to both services once: a misconfiguration is retried from then on.
        self._started = False
        self._refusals = Refusals(unhealthy_after_s=settings.unhealthy_after_s)
        # Per-row failures, logged once per reason and exchange per interval.
        self._row_events = RepeatedEvents()

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to finish the batches in flight and return.

        Safe in a signal handler: it only sets an event (logging there could deadlock on
        a lock the interrupted code holds); the loop logs ``relay.stopping`` itself.
        """
        self._stop_reason = reason
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def liveness(self) -> tuple[bool, str]:
        """Alive: the loop went round recently, or it is waiting on a blocked broker or
        retrying through an outage (both logged), which a restart would not fix; but not
        once a service has refused the configuration for ``unhealthy_after_s``."""
        refused = self._refusals.unhealthy()
        if refused is not None:
            return False, refused
        idle_s = time.monotonic() - self.last_iteration
        if idle_s <= LIVENESS_LIMIT_S:
            return True, f"last iteration {idle_s:.1f}s ago"
        if self._publisher.blocked:
            return True, "waiting: the broker blocks publishers (memory or disk alarm)"
        return False, f"no iteration for {idle_s:.0f}s"

    def readiness(self) -> tuple[bool, str]:
        """Ready: connected to the database and the broker."""
        if self._outage is not None:
            return False, self._outage
        if not self._store_ok:
            return False, "not connected to the database"
        if not self._publisher.connected:
            return False, "not connected to the broker"
        return True, f"connected; {len(self.owned_partitions)} partitions held"

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Relay until :meth:`stop`; reconnects with backoff through outages."""
        retrying = reconnecting(
            unavailable=(StoreUnavailableError, BrokerUnavailableError),
            should_stop=self._stopping.is_set,
            sleep=self._stopping.wait,
            on_outage=self._on_outage,
            backoff=self._backoff,
            # At start, a refusal no retry fixes ends the run (the CLI exits 3).
            fatal=lambda error: isinstance(error, MisconfiguredError) and not self._started,
        )
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="outbox-relay-store") as pool:
                self._store_thread = pool
                for attempt in retrying:
                    with attempt:
                        self._serve()
        except RetryError:
            pass  # asked to stop during an outage
        finally:
            self._store_thread = None
            if self._stopping.is_set():
                log.info("relay.stopping", reason=self._stop_reason)
            self._shutdown()
        log.info("relay.stopped")

    def _serve(self) -> None:
        self._connect()
        while not self._stopping.is_set():
            if self._renew_leases_only():
                self._went_round()
                self._sleep()
                continue
            notified, self._notified = self._notified, False
            polled, self._polled = self._polled, False
            result = self.run_batches()
            self._poll_at = None  # a claim is as good as a poll
            if polled and result.claimed:
                self._unannounced(result.claimed)
            self._went_round()
            step = self._wakeup.after_claim(result.claimed)
            if result.claimed:
                self._empty_polls = 0
            if step is Step.LOWER_FLAG:
                self._due_from_now(self._store.set_waiting(False))
                self._look_until = None
            elif step is Step.RAISE_FLAG:
                # Then look once more: a row committed before the flag was visible sent
                # no NOTIFY, but the next claim sees it. And keep looking for a little
                # while: producers that saw the flag down a moment ago send no NOTIFY yet
                # (wakeup.FlagSeen). The first backstop poll comes soon (see _sleep).
                self._due_from_now(self._store.set_waiting(True))
                self._look_until = time.monotonic() + LATE_LOOK_S
                self._empty_polls = 0
            elif step is Step.POLL:
                self._publisher.wait(BUSY_POLL_S)
            elif step is Step.SLEEP:
                if result.failed:
                    # Their retry is scheduled now: learn when the next row is due.
                    self._due_from_now(self._store.set_waiting(True))
                elif self._due_unknown or (notified and not result.claimed):
                    # The row slept for is due (and claimed), a delayed row was announced,
                    # or a NOTIFY found nothing due (a delayed row from a writer that did
                    # not say so): learn when the next one is due, or sleep would end at
                    # once or only at the backstop.
                    self._due_from_now(self._store.next_due_in())
                if result.held:
                    continue  # rows left in the table may be due now; no NOTIFY will come
                self._sleep()

    def _went_round(self) -> None:
        """The loop went round (for /healthz and the iteration gauge)."""
        self.last_iteration = time.monotonic()
        for event, fields in self._row_events.due():
            log.warning(event, **fields)
        self._observer.iteration(dt.datetime.now(tz=dt.timezone.utc))

    def _renew_leases_only(self) -> bool:
        """Heartbeat when due. True when the last sleep ended for the heartbeat alone
        and it took no partition: the loop sleeps on without claiming."""
        gained = time.monotonic() >= self._next_heartbeat and self._heartbeat()
        only = self._heartbeat_only and not gained  # claim new partitions' rows now
        self._heartbeat_only = False
        return only

    def _sleep(self) -> None:
        """Wait for a NOTIFY, the next scheduled row, or the backstop poll.

        The final check after raising the flag sees every row committed before the flag
        was visible; the looks every BUSY_POLL_S for LATE_LOOK_S after it see the rows of
        producers that still trusted it down; NOTIFY reports every row whose insert saw
        the flag. What is left is a transaction that inserted without a NOTIFY before
        the last of those looks and committed after it, and rows of writers that skip
        the wake-up. The first poll comes after ``poll_interval_s`` and finds such a
        row; each empty poll after it doubles the interval up to IDLE_POLL_MAX_S, so an
        idle relay costs a transaction every few seconds instead of two a second. This
        relies on the LISTEN connection being healthy: when it dies its socket becomes
        readable, the wait returns, and reading the notifications raises
        StoreUnavailableError.

        A sleep also ends for the lease heartbeat; one that ends for it alone claims
        nothing: the loop heartbeats and sleeps on until the poll, unless the heartbeat
        took a partition (see _serve).
        """
        poll = self._settings.poll_interval_s
        now = time.monotonic()
        if self._poll_at is None:
            self._poll_at = now + min(poll * 2**self._empty_polls, max(poll, IDLE_POLL_MAX_S))
        poll_in = max(0.0, self._poll_at - now)
        heartbeat_in = max(0.0, self._next_heartbeat - now)
        for_heartbeat = heartbeat_in < poll_in
        timeout = min(poll_in, heartbeat_in)
        if self._due_at is not None:
            timeout = min(timeout, max(0.0, self._due_at - now))
        if self._look_until is not None:
            timeout = min(timeout, BUSY_POLL_S)
        woke = self._publisher.wait(timeout, wake_fd=self._store.listen_fileno())
        now = time.monotonic()
        timer_fired = False
        if self._due_at is not None and now >= self._due_at:
            self._due_at = None
            self._due_unknown = True  # the next claim takes it; what is due after it?
            timer_fired = True
        if self._look_until is not None:
            timer_fired = True
            if now >= self._look_until:
                self._look_until = None
        # The backstop poll or the heartbeat ended this sleep, not a NOTIFY or a timer.
        ended = not woke and not timer_fired
        self._polled = ended and not for_heartbeat
        self._heartbeat_only = ended and for_heartbeat
        notices = self._store.drain_notifications() if woke else Notices(0, scheduled=False)
        if notices.count:
            # Something was inserted: claim it at once. The flag is lowered after that
            # claim has published (see _serve), off the path the new message waits on.
            self._empty_polls = 0
            self._notified = True
            self._due_unknown = self._due_unknown or notices.scheduled
        elif self._polled:
            self._empty_polls = min(self._empty_polls + 1, 16)

    def _unannounced(self, rows: int) -> None:
        """Rows that no NOTIFY announced while the relay slept: a transaction that raced
        the flag going up (rare), or a writer that skips the wake-up (every time)."""
        now = time.monotonic()
        last = self._unannounced_logged_at
        if last is not None and now - last < UNANNOUNCED_LOG_INTERVAL_S:
            return
        self._unannounced_logged_at = now
        log.warning(
            "relay.rows_without_wake_up",
            rows=rows,
            hint="rows were inserted while the relay slept and no NOTIFY announced them, "
            "so they waited for the backstop poll (up to 5 s). Writers other than "
            "outbox_relay.publish() must call SELECT <schema>.outbox_wake() in their "
            "transaction, or install the trigger: outbox-relay migrate --wake-trigger. "
            "Logged at most every 10 minutes; once after a burst can be a harmless race.",
        )

    def _heartbeat(self) -> bool:
        """Renew the leases; True when this relay now holds a partition it did not."""
        started = time.monotonic()
        leases = self._store.heartbeat()
        held = set(self._leases.owned) if self._leases is not None else set()
        gained = bool(set(leases.owned) - held)
        if self._leases is None or leases.owned != self._leases.owned:
            log.info(
                "relay.partitions_changed",
                owned=len(leases.owned),
                partitions=leases.partitions,
                live_relays=len(leases.live),
            )
        self._leases = leases
        self._observer.partitions(len(leases.owned))
        self._lease_deadline = started + self._settings.lease_ttl_s - LEASE_SAFETY_MARGIN_S
        self._next_heartbeat = started + self._settings.heartbeat_interval_s
        return gained

    @property
    def owned_partitions(self) -> tuple[int, ...]:
        return self._leases.owned if self._leases is not None else ()

    def _connect(self) -> None:
        if not self._store_ok:
            self._store.connect()
            self._store_ok = True
            self._accepted("database")
            self._wakeup.flag_lost()
            self._next_heartbeat = 0.0
            self._poll_at = None
        # A sleep cut short by the outage must not skip the claim after reconnecting.
        self._heartbeat_only = False
        if not self._publisher.connected:
            self._publisher.connect()
            self._accepted("broker")
        self._started = True
        self._backoff.connected()
        if self._outage is not None:
            log.info("relay.recovered", outage=self._outage)
            self._outage = None
        # An interrupted batch may have recorded failures (and their retry times) on its
        # way out: read when the next scheduled row is due before sleeping.
        self._due_at = None
        self._due_unknown = True
        self._look_until = None

    def _accepted(self, service: str) -> None:
        self._observer.dependency(service, up=True, refused=False)
        if self._refusals.accepted(service):
            log.info("relay.dependency_accepted", service=service)

    def _due_from_now(self, seconds: float | None) -> None:
        self._due_at = None if seconds is None else time.monotonic() + seconds
        self._due_unknown = False

    def _on_outage(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self._went_round()  # retrying is being alive (for /healthz and the iteration gauge)
        if isinstance(error, StoreUnavailableError):
            self._store.close()
            self._store_ok = False
            kind, service = "relay.database_unavailable", "database"
        else:
            self._publisher.close()
            kind, service = "relay.broker_unavailable", "broker"
        refused = isinstance(error, MisconfiguredError)
        self._observer.dependency(service, up=False, refused=refused)
        if refused:
            # Loud, at a bounded rate: a retry may succeed once someone fixes it.
            report = self._refusals.refused(service, str(error))
            if report.log:
                log.error(
                    "relay.dependency_refused",
                    service=service,
                    error=str(error),
                    refused_for_s=round(report.for_s, 1),
                    tries=report.tries,
                    retrying=True,
                )
        if self._outage != kind:
            if not refused:
                log.warning(kind, error=str(error), retrying=True)
            self._outage = kind
            self._observer.outage(service)

    def _shutdown(self) -> None:
        if self._store_ok:
            with contextlib.suppress(StoreUnavailableError):
                self._store.forget_waiting()
                self._store.release_leases()
        self._store.close()
        self._publisher.close()
        self._store_ok = False

    # -- batches ----------------------------------------------------------------------

    def run_batch(self) -> BatchResult:
        """Claim, publish and settle one batch. Raises the *Unavailable errors after
        settling what the broker already confirmed."""
        claim = self._claim()
        if claim is None:
            return BatchResult(0, 0, 0, 0)
        sent = self._send_claim(claim, ())
        return self._settle(claim, self._confirm_claim(claim, sent))

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
        pool = self._store_thread
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
                totals += self._settle(claim, outcomes)
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
        if not self.owned_partitions or time.monotonic() >= self._lease_deadline:
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
        heartbeat is due: heartbeats run between batches."""
        return (
            len(claim.rows) >= self._settings.batch_size
            and not claim.left_over
            and self._isolation.limit is None
            and not self._stopping.is_set()
            and time.monotonic() < self._next_heartbeat
        )

    def _send_claim(self, claim: Claim, waiting: Collection[int]) -> _Sent:
        """Send the claim's rows but ``waiting``; see :meth:`_send`."""
        with self._ending_on_error(claim):
            return self._send(claim.rows, waiting)

    def _confirm_claim(self, claim: Claim, sent: _Sent) -> dict[int, Outcome]:
        """The outcomes of the claim's rows; see :meth:`_confirm`."""
        with self._ending_on_error(claim):
            return self._confirm(claim.rows, sent)

    @contextlib.contextmanager
    def _ending_on_error(self, claim: Claim) -> Iterator[None]:
        """When publishing the claim fails, settle what the broker confirmed or refused
        (or release the claim when nothing is known) and re-raise."""
        try:
            yield
        except PublishInterruptedError as exc:
            if exc.outcomes:
                self._settle(claim, exc.outcomes)
            else:
                claim.release()
            raise
        except BaseException:
            claim.release()
            raise

    def _send(self, rows: Sequence[OutboxRow], waiting: Collection[int]) -> _Sent:
        """The first round: rows AMQP or the broker cannot carry, then rows to a missing
        exchange, fail before anything is sent, every row that would go out after a
        failed row of its key waits in the table, as do the ``waiting`` rows, and the
        rest go out. The exchange check only sees names AMQP can carry."""
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
        if not pending:
            return _Sent(outcomes, None)
        try:
            sending = self._publisher.send(pending, deadline=self._lease_deadline)
        except BrokerUnavailableError as exc:
            raise _interrupted(exc, outcomes) from exc
        return _Sent(outcomes, sending)

    def _confirm(self, rows: Sequence[OutboxRow], sent: _Sent) -> dict[int, Outcome]:
        """Wait for the first round's confirms; publish again what was left unsent (by
        a closed channel, or behind a message id already out), in up to
        MAX_PUBLISH_ROUNDS rounds in all."""
        outcomes = dict(sent.outcomes)
        sending = sent.sending
        rounds = 1
        try:
            while sending is not None:
                got = sending.outcomes()
                outcomes.update(got)
                self._isolation.sent(got)
                unsent = [i for i, o in outcomes.items() if o.status is Status.UNSENT]
                failed = [i for i, o in outcomes.items() if o.status is Status.FAILED]
                pending = self._within_limit(
                    resend_order(rows, unsent, held_back(rows, failed)), outcomes
                )
                if not pending or rounds >= MAX_PUBLISH_ROUNDS:
                    break
                sending = self._publisher.send(pending, deadline=self._lease_deadline)
                rounds += 1
        except BrokerUnavailableError as exc:
            # Opening a channel for the next round can fail too: settle the first's.
            raise _interrupted(exc, outcomes) from exc
        return outcomes

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

    def _settle(self, claim: Claim, outcomes: Mapping[int, Outcome]) -> BatchResult:
        rows = claim.rows
        published: list[OutboxRow] = []
        failures: list[Failure] = []
        for row in rows:
            outcome = outcomes.get(row.id)
            if outcome is None or outcome.status is Status.UNSENT:
                continue
            if outcome.status is Status.CONFIRMED:
                published.append(row)
                continue
            failures.append(self._failure(row, outcome.error or "unknown error", outcome.reason))
        claim.settle([row.id for row in published], failures)
        self._observer.batch_settled(
            claimed=len(rows),
            published=published,
            failures=failures,
            now=dt.datetime.now(tz=dt.timezone.utc),
        )
        # Rows left over by the byte budget count as held: the loop claims again at once.
        held = len(rows) + claim.left_over - len(published) - len(failures)
        if failures:
            exchanges = {row.id: row.exchange for row in rows}
            for failure in failures:
                # One line per cause, exchange and error text an interval: rows refused
                # alike (a missing exchange, no binding) are counted; each row refused for
                # its own data (its error names what) is still logged.
                lines = self._row_events.record(
                    "relay.row_dead" if failure.dead else "relay.row_failed",
                    (failure.reason.value, exchanges[failure.row_id], failure.error),
                    row_id=failure.row_id,
                    error=failure.error,
                    retry_in_s=None if failure.dead else round(failure.retry_in_s, 3),
                )
                for event, fields in lines:
                    log.warning(event, **fields)
        log.debug(
            "relay.batch_published", published=len(published), failed=len(failures), held=held
        )
        return BatchResult(len(rows) + claim.left_over, len(published), len(failures), held)

    def _failure(self, row: OutboxRow, error: str, reason: Reason | None) -> Failure:
        # attempts written with SQL may be anything the column holds: below zero counts
        # as none, and at the integer maximum the store saturates it.
        attempt = max(row.attempts, 0) + 1
        dead = attempt >= self._settings.max_attempts or (reason is not None and reason.permanent)
        delay = retry_delay_s(
            attempt,
            base_s=self._settings.retry_base_s,
            max_s=self._settings.retry_max_s,
            jitter=self._random_unit(),
        )
        return Failure(
            row_id=row.id,
            error=error,
            retry_in_s=0.0 if dead else delay,
            dead=dead,
            reason=reason or Reason.CHANNEL_CLOSED,
        )


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


def _interrupted(
    exc: BrokerUnavailableError, known: Mapping[int, Outcome]
) -> PublishInterruptedError:
    """``exc`` as an interruption that carries the ``known`` outcomes besides its own, so
    that the rows they settle are settled before the relay reconnects."""
    carried = exc.outcomes if isinstance(exc, PublishInterruptedError) else {}
    return PublishInterruptedError(str(exc), {**known, **carried})


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
