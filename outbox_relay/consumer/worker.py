"""Running handlers: a bounded pool of worker threads, each with its own database session.

A worker takes a :class:`Job`, decodes the message, runs the handler (inside the inbox
transaction when it takes ``tx``), commits, and reports a :class:`Result`; it never acks.
The runner's I/O thread settles results with the broker. No pika here.

Timeouts: Python cannot stop a thread. When a handler runs past its timeout the pool
marks its job abandoned, kills its database session (the transaction can no longer
commit, its locks go), starts a replacement worker so the pool keeps its size, and
reports the job as timed out. The abandoned thread keeps running the handler's Python
code until it returns; whatever it then reports is ignored. An ``async def`` handler runs
on its worker thread's event loop (:mod:`outbox_relay.consumer.aio`), in the same steps;
past its timeout its task is also cancelled, so its thread ends soon after.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from outbox_relay.consumer.aio import HandlerLoop
from outbox_relay.consumer.app import AfterCommitHook
from outbox_relay.consumer.errors import (
    HandlerTimeoutError,
    RateLimited,
    Retry,
    UndecodableMessageError,
)
from outbox_relay.consumer.failure import ErrorInfo
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.message import Delivery, Message, attempts_made, decode
from outbox_relay.consumer.policy import Verdict
from outbox_relay.errors import InboxBusyError, StoreUnavailableError
from outbox_relay.store.inbox import HandlerSession
from outbox_relay.tracing import trace_context_from

log = structlog.get_logger("outbox_relay.consumer")
REQUEUE_PAUSE_S = 1.0


class Kind(enum.Enum):
    HANDLED = "handled"  # committed: ack
    DUPLICATE = "duplicate"  # seen before: ack without running the handler
    RETRY = "retried"  # rolled back: republish to a delay tier (or park when exhausted), ack
    PARK = "parked"  # rolled back: republish to the parking lot, ack
    REQUEUE = "requeued"  # the database was unavailable: give the delivery back, no attempt lost
    BUSY = "busy"  # another delivery of the message is being handled: give it back, no pause
    PAUSED = "paused"  # the handler raised RateLimited: held until its pause ends, no attempt


class _State(enum.Enum):
    QUEUED = 0
    RUNNING = 1
    COMMITTING = 2
    ABANDONED = 3


@dataclass(eq=False)
class Job:
    """One delivery on its way through the pool. ``token`` is the runner's (channel and
    delivery tag); the pool only carries it."""

    delivery: Delivery
    handler: Handler[...]
    token: Any
    deadline: float = 0.0
    _state: _State = _State.QUEUED
    _lock: threading.Lock = field(default_factory=threading.Lock)
    session: HandlerSession | None = None
    loop: HandlerLoop | None = None  # the worker's event loop, to cancel an async handler

    def enter(self, state: _State, *, unless: _State = _State.ABANDONED) -> bool:
        with self._lock:
            if self._state is unless:
                return False
            self._state = state
            return True

    def abandon_if_running(self, now: float) -> bool:
        with self._lock:
            if self._state is not _State.RUNNING or now < self.deadline:
                return False
            self._state = _State.ABANDONED
            return True

    @property
    def abandoned(self) -> bool:
        return self._state is _State.ABANDONED


@dataclass(frozen=True)
class Result:
    job: Job
    kind: Kind
    attempt: int
    duration_s: float
    message: Message | None = None
    error: ErrorInfo | None = None
    requested_delay_s: float | None = None


SessionFactory = Callable[[], HandlerSession]


class WorkerPool:
    """``size`` threads running jobs; results go to ``on_result`` from the worker thread."""

    def __init__(
        self,
        *,
        size: int,
        consumer: str,
        new_session: SessionFactory | None,
        on_result: Callable[[Result], None],
        after_commit: list[AfterCommitHook],
        label: str = "",
    ) -> None:
        self._size = size
        self._label = label  # in its threads' names: which handler's pool
        self._consumer = consumer
        self._new_session = new_session
        self._on_result = on_result
        self._after_commit = after_commit
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._running: set[Job] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._serial = 0
        # Why the last database round trip of a handler failed; None once one succeeded.
        self.database_problem: str | None = None
        # Cleared by a worker that gave a delivery back for a database outage, set again
        # by take_unstarted: until then no worker starts a delivery queued behind it,
        # which would otherwise be handled before the one given back (the database may
        # answer again by then) and break the queue's order.
        self._go_on = threading.Event()
        self._go_on.set()

    def start(self) -> None:
        for _ in range(self._size):
            self._spawn()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def take_unstarted(self) -> list[Job]:
        """Remove and return the jobs no worker has started; the workers may start the
        next ones (see :attr:`held`)."""
        taken: list[Job] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            if job.enter(_State.ABANDONED, unless=_State.RUNNING):
                taken.append(job)
        self._go_on.set()
        return taken

    @property
    def held(self) -> bool:
        """A worker gave a delivery back for a database outage (its REQUEUE result was
        handed over first): no worker starts another job until :meth:`take_unstarted`
        took back those queued behind it."""
        return not self._go_on.is_set()

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def expire(self, now: float) -> list[Result]:
        """Abandon the jobs past their deadline; their results, timed out."""
        with self._lock:
            expired = [job for job in self._running if job.abandon_if_running(now)]
            for job in expired:
                self._running.discard(job)
        results = []
        for job in expired:
            if job.loop is not None and job.handler.is_async:
                job.loop.interrupt()  # cancels its task; the worker thread then ends
            session = job.session
            if session is not None:
                threading.Thread(target=session.kill, name="kill-session", daemon=True).start()
            self._spawn()
            error = HandlerTimeoutError(
                f"handler {job.handler.name} ran longer than its {job.handler.timeout_s:g} s "
                "timeout; its transaction was rolled back"
            )
            results.append(
                Result(
                    job=job,
                    kind=Kind.RETRY,
                    attempt=attempts_made(job.delivery.headers) + 1,
                    duration_s=job.handler.timeout_s,
                    error=ErrorInfo(type="HandlerTimeoutError", message=str(error)),
                )
            )
        return results

    def stop(self, timeout_s: float) -> None:
        """Let workers finish what they run (up to ``timeout_s``), then return."""
        for _ in self._threads:
            self._queue.put(None)
        self._go_on.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- worker threads -----------------------------------------------------------------

    def _spawn(self) -> None:
        self._serial += 1
        thread = threading.Thread(
            target=self._work,
            name=f"consumer-worker-{self._label}-{self._serial}"
            if self._label
            else f"consumer-worker-{self._serial}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        session = self._new_session() if self._new_session is not None else None
        loop = HandlerLoop()  # its event loop is only created for an async handler
        try:
            while True:
                self._go_on.wait()
                job = self._queue.get()
                if job is None:
                    return
                # The pool's session serves the handlers that take a transaction; one
                # that does not runs without it (no inbox row, no message id needed),
                # also in a pool it shares with handlers that do.
                own = session if job.handler.uses_db else None
                job.session, job.loop = own, loop
                deadline = time.monotonic() + job.handler.timeout_s
                with self._lock:
                    job.deadline = deadline
                    if not job.enter(_State.RUNNING):
                        continue
                    self._running.add(job)
                result = self._process(job, own)
                with self._lock:
                    self._running.discard(job)
                if job.abandoned:
                    return  # a replacement worker took this one's place
                if result is not None:
                    self._on_result(result)
                    if result.kind is Kind.REQUEUE:
                        self._go_on.clear()  # after the result: the runner settles it first
        finally:
            loop.close()
            if session is not None:
                session.close()

    def _process(self, job: Job, session: HandlerSession | None) -> Result | None:
        started = time.monotonic()
        attempt = attempts_made(job.delivery.headers) + 1

        def result(kind: Kind, **kw: Any) -> Result:
            return Result(job, kind, attempt, time.monotonic() - started, **kw)

        try:
            message = decode(job.delivery, require_message_id=session is not None)
        except UndecodableMessageError as exc:
            return result(Kind.PARK, error=ErrorInfo.from_exception(exc))
        try:
            kind = self._run_handler(job, message, session)
        except (InboxBusyError, StoreUnavailableError) as exc:
            # Busy: the database answers, another delivery of the message holds its row.
            return self._give_back(job, exc, session, result(Kind.BUSY, message=message))
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried, never lost
            return self._failed(job, exc, session, result(Kind.RETRY, message=message))
        if kind is None:
            return None
        if session is not None:
            self.database_problem = None
        if kind is Kind.HANDLED:
            self._run_hooks(message)
        return result(kind, message=message)

    def _failed(
        self, job: Job, exc: Exception, session: HandlerSession | None, retry: Result
    ) -> Result | None:
        """The handler (or its commit) raised ``exc``: retry or park, as its policy says."""
        # The handler's own statement found its connection gone: an outage, not a
        # failure of this message (no attempt spent), exactly as for the SDK's own.
        lost = session.lost_connection(exc) if session is not None else None
        if lost is not None:
            return self._give_back(job, lost, session, retry)
        if session is not None:
            session.rollback()
        if job.abandoned:
            return None
        if isinstance(exc, RateLimited):
            # The outside world said "slow down": held and paused, no attempt counted.
            return replace(
                retry,
                kind=Kind.PAUSED,
                error=ErrorInfo.from_exception(exc),
                requested_delay_s=exc.retry_after,
            )
        parks = job.handler.policy.verdict(exc) is Verdict.PARK
        return replace(
            retry,
            kind=Kind.PARK if parks else Kind.RETRY,
            error=ErrorInfo.from_exception(exc),
            requested_delay_s=exc.delay if isinstance(exc, Retry) else None,
        )

    def _give_back(
        self,
        job: Job,
        exc: InboxBusyError | StoreUnavailableError,
        session: HandlerSession | None,
        given: Result,
    ) -> Result | None:
        """The delivery goes back to the queue, no attempt spent: BUSY when another
        delivery holds the message's inbox row, REQUEUE (the consumer pauses) when the
        database is unavailable."""
        if session is not None:
            session.rollback()
        if job.abandoned:
            # Timed out meanwhile: the pool reported it already, and killed the session
            # itself (which is why its statement found the connection gone).
            return None
        is_busy = isinstance(exc, InboxBusyError)
        if not is_busy:
            self.database_problem = str(exc)
            time.sleep(REQUEUE_PAUSE_S)  # a database outage must not spin deliveries round
        return replace(
            given,
            kind=Kind.BUSY if is_busy else Kind.REQUEUE,
            error=ErrorInfo.from_exception(exc),
        )

    def _run_handler(
        self, job: Job, message: Message, session: HandlerSession | None
    ) -> Kind | None:
        """Run the handler and commit; None when the job was abandoned meanwhile."""
        handler = job.handler
        if session is None:
            with trace_context_from(message.headers):
                handler.invoke(message, loop=job.loop)
            return Kind.HANDLED if job.enter(_State.COMMITTING) else None
        assert message.message_id is not None  # noqa: S101 - checked by _process
        fresh = session.begin(
            consumer=f"{self._consumer}:{handler.queue}", message_id=message.message_id
        )
        if fresh:
            # An async handler gets the same transaction through psycopg's async API.
            tx = session.async_connection if handler.is_async else session.connection
            with trace_context_from(message.headers):
                handler.invoke(message, tx, loop=job.loop)
        if not job.enter(_State.COMMITTING):
            session.rollback()
            return None
        session.commit()
        return Kind.HANDLED if fresh else Kind.DUPLICATE

    def _run_hooks(self, message: Message) -> None:
        for hook in self._after_commit:
            try:
                hook(message)
            except Exception as exc:  # noqa: BLE001 - the work is committed; a hook cannot undo it
                log.warning(
                    "consumer.after_commit_hook_failed",
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    error=f"{type(exc).__name__}: {exc}",
                )
