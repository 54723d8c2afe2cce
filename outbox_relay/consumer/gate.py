"""The flow gate: deliveries wait here for their rate-limit token or the end of a pause,
before a worker starts their transaction.

The runner hands every delivery to :meth:`FlowGate.submit`. A handler without a rate
limit and not paused goes straight to the worker pool, on the caller's thread: a dict
lookup and a clock reading, no lock, no round trip, no hop through the gate thread. It
waits here only while this process's view of the other processes' pauses is older than
:data:`~outbox_relay.consumer.pauses.PAUSE_CHECK_S`, for the one round trip that
refreshes it. The gate thread refreshes that view ahead while deliveries flow, so only
the first deliveries after start or an idle spell wait for it; they do on purpose: a
process that had nothing to do does not start the first delivery a pause elsewhere
should hold on a view read before that pause (read at start, the view would be up to a
second old when the first deliveries come). Otherwise the
delivery joins its bucket (the handler's, or its key's with ``rate_limit_key=``) and
stays unacked, within the prefetch, while one gate thread takes tokens from
``<schema>.consumer_flow`` (:mod:`outbox_relay.store.flow`): one short round trip per
token, or per small lease at high rates (:func:`~outbox_relay.consumer.rate_limit.
lease_size`), each bucket taking its next lease once the last one is used. The thread
sleeps until the next token is due; no transaction is open meanwhile.

Pauses: a handler that raised :class:`~outbox_relay.consumer.errors.RateLimited` is
paused here at once and in the table for every process (:mod:`~outbox_relay.consumer.
pauses`). Its deliveries wait here until the pause ends, the one that raised first.

The runner takes back what waits (:meth:`FlowGate.take_held`) on SIGTERM, on losing the
connection and when the database goes away. A database that fails a lease gives the
bucket's deliveries back as ``Kind.REQUEUE`` results, which the runner treats as any
database outage.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from outbox_relay.consumer.errors import UndecodableMessageError
from outbox_relay.consumer.failure import ErrorInfo
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.message import attempts_made, decode
from outbox_relay.consumer.observer import FlowObserver
from outbox_relay.consumer.pauses import Pauses
from outbox_relay.consumer.rate_limit import (
    DEFAULT_BUCKET,
    RateLimit,
    due_offsets,
    lease_size,
    lease_span_s,
    pause_s,
    stored_key,
)
from outbox_relay.consumer.worker import Job, Kind, Result
from outbox_relay.errors import SchemaNotMigratedError, StoreError, StoreUnavailableError
from outbox_relay.store.flow import FlowStore

log = structlog.get_logger("outbox_relay.consumer")
IDLE_WAIT_S = 1.0
OUTAGE_WAIT_S = 1.0  # after a failed lease, before the next one
SLOW_LIMIT_WARN_S = 600.0  # a third of RabbitMQ's default consumer_timeout
RATE_WINDOW_S = 10.0  # the "rate held" in the status is over this window


@dataclass(eq=False)
class _Bucket:
    handler: Handler[...]
    key: str
    waiting: collections.deque[tuple[Job, float]] = field(default_factory=collections.deque)
    # Leased tokens not used yet: (due, expires), monotonic. A token is used by a
    # delivery that came before it expired (the gate thread may start it later).
    tokens: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)

    def drop_expired(self, before: float) -> None:
        """Drop the tokens that expired before ``before``: no delivery waited for them."""
        while self.tokens and self.tokens[0][1] <= before:
            self.tokens.popleft()


class FlowGate:
    """See the module's docstring. ``submit_to_pool`` starts a job; ``give_back`` settles a
    result (a delivery the gate cannot take a token for). ``prefetch``: each handler's
    (by queue), for the warning about slow limits. ``share_pauses=False``: a pause holds
    only in this process and handlers without a limit never ask the database about
    pauses (the gate as it was before pauses were shared; what the rate-limit benchmark
    measures the shared pauses against)."""

    def __init__(
        self,
        *,
        handlers: Iterable[Handler[...]],
        store: FlowStore | None,
        submit_to_pool: Callable[[Job], None],
        give_back: Callable[[Result], None],
        observer: FlowObserver | None = None,
        prefetch: Mapping[str, int] | None = None,
        share_pauses: bool = True,
    ) -> None:
        self._handlers = list(handlers)
        self._prefetch = dict(prefetch or {})  # queue -> its handler's prefetch
        self._store = store
        self._submit = submit_to_pool
        self._give_back = give_back
        self._observer = observer
        self._cond = threading.Condition()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        # Pauses shared with the app's other processes when there is a store.
        self._pauses = Pauses(shared=store is not None and share_pauses, observer=observer)
        self.tokens_granted = 0  # since start, every handler
        self.deliveries_waited = 0  # since start: deliveries that did not start on submit
        self._granted: dict[str, collections.deque[float]] = {
            h.inbox_key: collections.deque() for h in self._handlers if h.rate_limit
        }
        self._retry_at = 0.0
        self._stopping = threading.Event()
        self._changed = False  # something arrived since the last turn: no sleeping
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def check(self) -> None:
        """At start: the table exists. Raises SchemaNotMigratedError (with the fix) when a
        handler has a rate limit; without one only cross-process pauses are off."""
        if self._store is None:
            return
        try:
            self._store.check()
        except SchemaNotMigratedError as exc:
            if any(h.rate_limit for h in self._handlers):
                raise
            self._pauses.shared = False
            log.warning(
                "consumer.pauses_local",
                error=str(exc),
                hint="RateLimited pauses only this process until the schema is migrated",
            )
        except StoreUnavailableError:
            pass  # the runner's database check reports it

    def start(self) -> None:
        self._warn_slow_limits()
        self._thread = threading.Thread(target=self._run, name="flow-gate", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)
        if self._store is not None:
            self._store.close()
            log.info(
                "consumer.flow_stopped",
                round_trips=self._store.round_trips,
                tokens=self.tokens_granted,
                waited=self.deliveries_waited,
            )

    def _warn_slow_limits(self) -> None:
        """A delivery waits unacked for its token; RabbitMQ ends a channel that holds one
        past its consumer_timeout (30 min by default). Say so when this process alone
        may hold one that long in the worst case: the handler's prefetch (its own pool's,
        with its own concurrency) times the token interval."""
        for handler in self._handlers:
            limit = handler.rate_limit
            prefetch = self._prefetch.get(handler.queue, 0)
            if limit is None or not prefetch:
                continue
            wait_s = prefetch * limit.interval_s
            if wait_s >= SLOW_LIMIT_WARN_S:
                log.warning(
                    "consumer.rate_limit_slow",
                    handler=handler.name,
                    limit=limit.describe(),
                    prefetch=prefetch,
                    longest_wait_s=round(wait_s),
                    hint="deliveries wait unacked for their token, and each process holds "
                    "up to the prefetch: lower prefetch_multiplier (or the handler's "
                    "concurrency), or raise RabbitMQ's "
                    "consumer_timeout above the longest wait times the processes",
                )

    # -- from the runner's I/O thread ----------------------------------------------------

    def submit(self, job: Job) -> None:
        handler = job.handler
        if handler.rate_limit is None and self._pauses.none and self._pauses.fresh():
            self._pauses.flowing = True
            self._submit(job)  # the usual path: no lock, no round trip
            return
        with self._cond:
            now = time.monotonic()
            if (
                handler.rate_limit is None
                and not self._pauses.is_paused(handler, now)
                and self._pauses.fresh(now)
            ):
                self._submit(job)
                return
            self._bucket_of(job).waiting.append((job, now))
            self.deliveries_waited += 1
            self._changed = True
            self._cond.notify()

    def pause(self, handler: Handler[...], seconds: float, *, again: Job) -> None:
        """``handler`` raised RateLimited on ``again``'s delivery: pause it everywhere and
        hold the delivery until the pause ends (no attempt counted)."""
        seconds = pause_s(seconds)
        with self._cond:
            self._pause_here(handler, seconds)
            self._pauses.to_record(handler, seconds)
            self._bucket_of(again).waiting.appendleft((again, time.monotonic()))
            self._changed = True
            self._cond.notify()

    def take_held(self) -> list[Job]:
        """Remove and return every delivery waiting here; leased tokens are dropped."""
        with self._cond:
            jobs = []
            for bucket in self._buckets.values():
                jobs += [job for job, _ in bucket.waiting]
                bucket.waiting.clear()  # a lease failing meanwhile must not give them back too
            self._buckets.clear()
            return jobs

    @property
    def held(self) -> int:
        with self._cond:
            return sum(len(b.waiting) for b in self._buckets.values())

    def describe(self) -> str:
        """Each limit, the rate it held lately and any pause, for the status text."""
        now = time.monotonic()
        parts = []
        with self._cond:
            for handler in self._handlers:
                words = []
                limit = handler.rate_limit
                if limit is not None:
                    granted = self._granted[handler.inbox_key]
                    while granted and granted[0] < now - RATE_WINDOW_S:
                        granted.popleft()
                    key = f" per {handler.rate_key.describe()}" if handler.rate_key else ""
                    words.append(
                        f"limit {limit.describe()}{key}, held "
                        f"{len(granted) / RATE_WINDOW_S:.1f}/s here"
                    )
                left = self._pauses.left_s(handler, now)
                if left > 0:
                    words.append(f"paused for {left:.0f}s more")
                if words:
                    parts.append(f"{handler.name}: {', '.join(words)}")
        return "; ".join(parts)

    # -- the gate thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait_s = self._turn()
            except Exception:  # the gate must outlive any one failure; logged with its traceback
                log.exception("consumer.flow_gate_failed")
                wait_s = OUTAGE_WAIT_S
            with self._cond:
                if wait_s > 0 and not self._changed:
                    self._cond.wait(wait_s)
                self._changed = False

    def _turn(self) -> float:
        """Release due deliveries, lease tokens where needed; how long to sleep."""
        now = time.monotonic()
        to_lease: list[_Bucket] = []
        wait_s = IDLE_WAIT_S
        check = False
        with self._cond:
            self._pauses.end_expired(now)
            for where, bucket in list(self._buckets.items()):
                handler = bucket.handler
                if not bucket.waiting:
                    bucket.drop_expired(now)
                if not bucket.waiting and not bucket.tokens:
                    del self._buckets[where]  # a key seen once costs nothing later
                    continue
                left = self._pauses.left_s(handler, now)
                if left > 0:
                    wait_s = min(wait_s, left)
                    continue
                if handler.rate_limit is None and not self._pauses.fresh(now):
                    check = True  # ask the database before these start
                    continue
                self._release(bucket, now)
                if not bucket.waiting:
                    continue
                if bucket.tokens:
                    wait_s = min(wait_s, bucket.tokens[0][0] - now)
                elif now >= self._retry_at:
                    to_lease.append(bucket)
                else:
                    wait_s = min(wait_s, self._retry_at - now)
            pauses = self._pauses.take_to_record()
            refresh, refresh_in_s = self._pauses.refresh_due(now, idle_s=IDLE_WAIT_S)
            check, wait_s = check or refresh, min(wait_s, refresh_in_s)
        for consumer, seconds in pauses.items():
            self._record_pause(consumer, seconds)
        if check:
            self._check_pauses(now)
        for bucket in to_lease:
            self._lease(bucket)
        return 0.0 if to_lease or pauses or check else max(wait_s, 0.0)

    def _release(self, bucket: _Bucket, now: float) -> None:
        """Under the lock: start the deliveries whose token is due (all of them for a
        handler without a limit, once its pause ended)."""
        handler = bucket.handler
        limit = handler.rate_limit
        while bucket.waiting:
            job, since = bucket.waiting[0]
            if limit is not None:
                bucket.drop_expired(since)  # leftovers that expired before it came
                if not bucket.tokens or bucket.tokens[0][0] > now:
                    return
                bucket.tokens.popleft()
                self.tokens_granted += 1
                granted = self._granted[handler.inbox_key]
                granted.append(now)
                while granted[0] < now - RATE_WINDOW_S:  # only the status's window is kept
                    granted.popleft()
                if self._observer is not None:
                    self._observer.token_waited(
                        queue=handler.queue, handler=handler.name, seconds=now - since
                    )
            bucket.waiting.popleft()
            self._submit(job)

    def _lease(self, bucket: _Bucket) -> None:
        handler = bucket.handler
        limit: RateLimit | None = handler.rate_limit
        if limit is None or self._store is None:
            return
        count = lease_size(limit)
        span_s = lease_span_s(limit, count)
        try:
            lease = self._store.lease(
                consumer=handler.inbox_key,
                key=stored_key(limit, bucket.key),
                count=count,
                span_s=span_s,
            )
        except StoreError as exc:
            self._outage(bucket, exc)
            return
        now = time.monotonic()
        with self._cond:
            if not lease.granted:
                self._pause_here(handler, lease.paused_s)
                return
            if self._pauses.left_s(handler, now) > 0:
                return  # paused meanwhile: tokens from before a pause are dropped
            offsets = due_offsets(limit, start_s=lease.start_s, count=count)
            if self._buckets.get((handler.inbox_key, bucket.key)) is bucket:
                # Each expires the lease's span after it falls due (rate_limit's docstring).
                bucket.tokens.extend((now + o, now + o + span_s) for o in offsets)

    def _outage(self, bucket: _Bucket, exc: StoreError) -> None:
        """A lease failed: its deliveries go back like any delivery the database could not
        take (the runner pauses consuming until the database answers)."""
        with self._cond:
            jobs = [job for job, _ in bucket.waiting]
            bucket.waiting.clear()
            self._retry_at = time.monotonic() + OUTAGE_WAIT_S
        error = ErrorInfo.from_exception(exc)
        for job in jobs:
            self._give_back(
                Result(job, Kind.REQUEUE, attempts_made(job.delivery.headers) + 1, 0.0, error=error)
            )

    def _record_pause(self, consumer: str, seconds: float) -> None:
        assert self._store is not None  # noqa: S101 - pauses are recorded only with a store
        try:
            left = self._store.pause(consumer=consumer, seconds=seconds)
        except StoreError as exc:
            log.warning("consumer.pause_not_shared", consumer=consumer, error=str(exc))
            return
        handler = next(h for h in self._handlers if h.inbox_key == consumer)
        with self._cond:
            self._pause_here(handler, left)

    def _check_pauses(self, now: float) -> None:
        assert self._store is not None  # noqa: S101 - checked only with a store
        self._pauses.flowing = False
        try:
            paused = self._store.paused([h.inbox_key for h in self._handlers])
        except StoreError as exc:
            # The deliveries go ahead; their own transactions meet the outage, if it is one.
            log.info("consumer.pause_check_failed", error=str(exc))
            paused = {}
        with self._cond:
            self._pauses.checked(now)
            for handler in self._handlers:
                left = paused.get(handler.inbox_key)
                if left is not None:
                    self._pause_here(handler, left)

    # -- under the lock -------------------------------------------------------------------

    def _pause_here(self, handler: Handler[...], seconds: float) -> None:
        """Pause ``handler`` in this process for ``seconds`` (unless already for longer),
        dropping the tokens its buckets leased before: used after the pause, they would
        come on top of the burst its shared buckets refill meanwhile."""
        if self._pauses.extend(handler, seconds):
            for bucket in self._buckets.values():
                if bucket.handler is handler:
                    bucket.tokens.clear()

    def _bucket_of(self, job: Job) -> _Bucket:
        handler = job.handler
        key = DEFAULT_BUCKET
        if handler.rate_key is not None:
            with contextlib.suppress(UndecodableMessageError):
                key = handler.rate_key.key_of(decode(job.delivery))
        bucket = self._buckets.get((handler.inbox_key, key))
        if bucket is None:
            bucket = self._buckets[handler.inbox_key, key] = _Bucket(handler, key)
        return bucket
