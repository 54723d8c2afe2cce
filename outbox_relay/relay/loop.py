"""The relay loop: heartbeat, claim and publish batches, settle, sleep until woken.

It carries decisions made elsewhere to the two doors (:mod:`outbox_relay.relay.ports`):
when to claim and how long to sleep (:mod:`~outbox_relay.relay.planner`), what to do with
a batch (:mod:`~outbox_relay.relay.pipeline`), which partitions it holds
(:mod:`~outbox_relay.relay.leases`). It owns the lifecycle: connecting, reconnecting
through outages, stopping, and what /healthz and /readyz report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import structlog
from tenacity import RetryCallState, RetryError

from outbox_relay.errors import (
    BrokerUnavailableError,
    MisconfiguredError,
    StoreUnavailableError,
)
from outbox_relay.misconfiguration import Refusals
from outbox_relay.reconnect import ReconnectBackoff, reconnecting
from outbox_relay.relay.leases import LeaseHold
from outbox_relay.relay.pipeline import BatchPipeline
from outbox_relay.relay.planner import FlagMove, SleepPlanner, Wake
from outbox_relay.relay.ports import BatchResult, NullObserver, Publisher, RelayObserver, Store
from outbox_relay.relay.settings import (
    LIVENESS_LIMIT_S,
    UNANNOUNCED_LOG_INTERVAL_S,
    RelaySettings,
)

log = structlog.get_logger("outbox_relay.relay")


class Relay:
    """Moves committed outbox rows to the broker. Not thread-safe: one thread runs it
    (while it lends store calls to a helper thread of its own, see
    :meth:`BatchPipeline.run_batches`); :meth:`stop` may be called from any thread or a
    signal handler.

    :meth:`run` relays until stopped. As a context manager it connects, takes its
    partitions and starts its store thread, and :meth:`step` goes round the loop once:
    tests and embedders drive it that way.
    """

    def __init__(
        self,
        *,
        store: Store,
        publisher: Publisher,
        settings: RelaySettings,
        random_unit: Callable[[], float] = random.random,
        observer: RelayObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: ReconnectBackoff | None = None,
        outage_sleep: Callable[[float], object] | None = None,
    ) -> None:
        """``clock`` (monotonic seconds), ``backoff`` (the waits between reconnects) and
        ``outage_sleep`` (which waits them; by default until :meth:`stop`) are for tests."""
        self._store = store
        self._publisher = publisher
        self._observer: RelayObserver = observer or NullObserver()
        self._clock = clock
        self._stopping = threading.Event()
        self._stop_reason = ""
        self._store_ok = False
        self._outage: str | None = None
        self._started = False  # connected to both once: a refusal is retried from then on
        self._unannounced_logged_at: float | None = None
        self._planner = SleepPlanner(
            poll_interval_s=settings.poll_interval_s,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            batch_size=settings.batch_size,
        )
        self._leases = LeaseHold(lease_ttl_s=settings.lease_ttl_s)
        self._batches = BatchPipeline(
            store=store,
            publisher=publisher,
            settings=settings,
            observer=self._observer,
            leases=self._leases,
            stopping=self._stopping,
            claim_ahead_allowed=self._planner.may_claim_ahead,
            random_unit=random_unit,
            clock=clock,
        )
        # Restarts from its base once connected again (see _connect).
        self._backoff = backoff or ReconnectBackoff(
            max_s=settings.reconnect_max_s, random_unit=random_unit
        )
        self._outage_sleep = outage_sleep or self._stopping.wait
        self._refusals = Refusals(unhealthy_after_s=settings.unhealthy_after_s)
        self.last_iteration = clock()
        self._threads = contextlib.ExitStack()  # the store thread while entered

    # -- from outside -------------------------------------------------------------------

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

    @property
    def owned_partitions(self) -> tuple[int, ...]:
        return self._leases.owned

    @property
    def flag_up(self) -> bool:
        """Whether the relay's wake-up flag is up: it waits for producers' NOTIFY."""
        return self._planner.flag_up

    @property
    def isolating(self) -> bool:
        """Sending fewer rows at a time to find one the broker refuses."""
        return self._batches.isolating

    def liveness(self) -> tuple[bool, str]:
        """Alive: the loop went round recently, or it is waiting on a blocked broker or
        retrying through an outage (both logged), which a restart would not fix; but not
        once a service has refused the configuration for ``unhealthy_after_s``."""
        refused = self._refusals.unhealthy()
        if refused is not None:
            return False, refused
        idle_s = self._clock() - self.last_iteration
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
            sleep=self._outage_sleep,
            on_outage=self._on_outage,
            backoff=self._backoff,
            # At start, a refusal no retry fixes ends the run (the CLI exits 3).
            fatal=lambda error: isinstance(error, MisconfiguredError) and not self._started,
        )
        try:
            with self._store_thread():
                for attempt in retrying:
                    with attempt:
                        self._connect()
                        while not self._stopping.is_set():
                            self.step()
        except RetryError:
            pass  # asked to stop during an outage
        finally:
            if self._stopping.is_set():
                log.info("relay.stopping", reason=self._stop_reason)
            self._shutdown()
        log.info("relay.stopped")

    def step(self) -> BatchResult:
        """Go round the loop once: heartbeat when due, then a round of batches, and
        sleep when the planner says so. Returns what the round did (nothing when the
        last sleep ended for the heartbeat alone: it sleeps on)."""
        planner = self._planner
        gained = planner.heartbeat_due(self._clock()) and self._heartbeat()
        if planner.sleep_on(gained=gained):
            self._went_round()
            self._sleep()
            return BatchResult(0, 0, 0, 0)
        planner.claiming()
        result = self._batches.run_batches()
        after = planner.after_batches(
            claimed=result.claimed, failed=result.failed, held=result.held
        )
        # A NOTIFY that came after the poll ended the sleep announced them after all.
        if after.unannounced and not self._store.notices_waiting():
            self._unannounced(result.claimed)
        self._went_round()
        if after.flag is not None:
            due_in_s = self._store.set_waiting(after.flag is not FlagMove.LOWER)
            planner.flag_moved(self._clock(), after.flag, due_in_s)
        elif after.read_due:
            planner.due_in(self._clock(), self._store.next_due_in())
        if after.pause_s:
            self._publisher.wait(after.pause_s)
        if after.sleep:
            self._sleep()
        return result

    def run_batch(self) -> BatchResult:
        """Claim, publish and settle one batch (see :meth:`BatchPipeline.run_batch`)."""
        return self._batches.run_batch()

    def run_batches(self) -> BatchResult:
        """Batches back to back while they come back full (see
        :meth:`BatchPipeline.run_batches`)."""
        return self._batches.run_batches()

    def _sleep(self) -> None:
        """Wait for a NOTIFY or the planner's next timer (see the planner's doc)."""
        wait = self._planner.next_wait(self._clock())
        # A NOTIFY read with a heartbeat's or a flag change's answer leaves nothing on
        # the socket to wake the sleep: claim for it at once.
        waiting = self._store.notices_waiting()
        timeout_s = 0.0 if waiting else wait.timeout_s
        readable = self._publisher.wait(timeout_s, wake_fd=self._store.listen_fileno())
        readable = readable or waiting
        self._planner.woke(self._clock(), Wake.READABLE if readable else Wake.TIMEOUT)
        if readable:
            self._planner.heard(self._store.drain_notifications())

    def _went_round(self) -> None:
        """The loop went round (for /healthz and the iteration gauge)."""
        self.last_iteration = self._clock()
        self._batches.log_repeated()
        self._observer.iteration(dt.datetime.now(tz=dt.timezone.utc))

    def _heartbeat(self) -> bool:
        """Renew the leases; True when this relay now holds a partition it did not."""
        started = self._clock()
        leases = self._store.heartbeat()
        gained = self._leases.renewed(leases, started=started)
        self._observer.partitions(len(leases.owned))
        self._planner.heartbeated(started)
        return gained

    def _unannounced(self, rows: int) -> None:
        """Rows that no NOTIFY announced while the relay slept: a transaction that raced
        the flag going up (rare), or a writer that skips the wake-up (every time)."""
        now = self._clock()
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

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Relay:
        """Connect, take this relay's partitions, and start the store thread."""
        self._threads = contextlib.ExitStack()
        self._threads.enter_context(self._store_thread())
        try:
            self._connect()
            self._heartbeat()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Hand the partitions back and close both connections."""
        try:
            self._shutdown()
        finally:
            self._threads.close()

    @contextlib.contextmanager
    def _store_thread(self) -> Iterator[None]:
        with ThreadPoolExecutor(1, thread_name_prefix="outbox-relay-store") as pool:
            self._batches.store_thread = pool
            try:
                yield
            finally:
                self._batches.store_thread = None

    def _connect(self) -> None:
        reconnected_store = not self._store_ok
        if reconnected_store:
            self._store.connect()
            self._store_ok = True
            self._accepted("database")
        self._planner.connected(store=reconnected_store)
        if not self._publisher.connected:
            self._publisher.connect()
            self._accepted("broker")
        self._started = True
        self._backoff.connected()
        if self._outage is not None:
            log.info("relay.recovered", outage=self._outage)
            self._outage = None

    def _accepted(self, service: str) -> None:
        self._observer.dependency(service, up=True, refused=False)
        if self._refusals.accepted(service):
            log.info("relay.dependency_accepted", service=service)

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
