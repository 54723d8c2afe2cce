"""Worker pools per handler: a handler with its own ``concurrency`` cannot starve the others.

Handlers registered without ``concurrency=`` share one pool of the app's
``concurrency`` threads, as they always did; each handler with ``concurrency=N`` gets a
pool of its own, N threads (each with its database session when the handler takes
one), fed only by its queue. Its queue is consumed with its own prefetch,
``N x prefetch_multiplier`` (per consumer: RabbitMQ applies a ``basic.qos`` with
``global=False`` to the consumers a channel starts after it), so the broker never hands
the handler more than its pool can start soon, and a backlog of slow messages waits in
the broker rather than ahead of other handlers' messages.

Why a pool per handler rather than one pool with a semaphore per handler: a worker of a
shared pool that picked up a message whose handler is at its limit would have to wait,
holding a thread (and a database session) the other handlers need; or the pool would
need a scheduler that skips such messages. Separate pools keep each pool's FIFO queue
and timeout handling exactly as before, at the cost of threads and sessions: the app
opens the sum of its pools' sizes in database sessions.

:class:`WorkerPools` answers the runner as one :class:`~outbox_relay.consumer.worker.WorkerPool`
did. No pika here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from outbox_relay.consumer.app import AfterCommitHook
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.settings import ConsumerSettings
from outbox_relay.consumer.worker import Job, Result, SessionFactory, WorkerPool

SHARED = "(shared)"  # the name of the app-wide pool in logs


def prefetch_for(handler: Handler[...], settings: ConsumerSettings) -> int:
    """How many unacknowledged deliveries the broker may hand over from ``handler``'s
    queue: its pool's size (its own, or the app's) x ``prefetch_multiplier``."""
    size = handler.concurrency if handler.concurrency is not None else settings.concurrency
    return size * settings.prefetch_multiplier


def pool_sizes(handlers: Sequence[Handler[...]], settings: ConsumerSettings) -> dict[str, int]:
    """Each pool's name (a handler's, or SHARED) and size, for logs and status."""
    sizes = {h.name: h.concurrency for h in handlers if h.concurrency is not None}
    if any(h.concurrency is None for h in handlers):
        sizes = {SHARED: settings.concurrency, **sizes}
    return sizes


class WorkerPools:
    """The shared pool and one pool per handler with its own ``concurrency``."""

    def __init__(
        self,
        handlers: Sequence[Handler[...]],
        *,
        concurrency: int,
        consumer: str,
        new_session: SessionFactory | None,
        on_result: Callable[[Result], None],
        after_commit: list[AfterCommitHook],
    ) -> None:
        def pool(size: int, members: Sequence[Handler[...]], label: str) -> WorkerPool:
            needs_db = new_session is not None and any(h.uses_db for h in members)
            return WorkerPool(
                size=size,
                consumer=consumer,
                new_session=new_session if needs_db else None,
                on_result=on_result,
                after_commit=after_commit,
                label=label,
            )

        shared = [h for h in handlers if h.concurrency is None]
        self._shared = pool(concurrency, shared, SHARED) if shared else None
        self._own = {
            h: pool(h.concurrency, [h], h.name) for h in handlers if h.concurrency is not None
        }
        self._all = [p for p in (self._shared, *self._own.values()) if p is not None]

    def _for(self, handler: Handler[...]) -> WorkerPool:
        own = self._own.get(handler)
        if own is not None:
            return own
        if self._shared is None:
            raise KeyError(f"handler {handler.name} is not one of this app's handlers")
        return self._shared

    def start(self) -> None:
        for pool in self._all:
            pool.start()

    def submit(self, job: Job) -> None:
        self._for(job.handler).submit(job)

    def take_unstarted(self) -> list[Job]:
        return [job for pool in self._all for job in pool.take_unstarted()]

    @property
    def held(self) -> bool:
        return any(pool.held for pool in self._all)

    @property
    def busy(self) -> int:
        return sum(pool.busy for pool in self._all)

    def expire(self, now: float) -> list[Result]:
        return [result for pool in self._all for result in pool.expire(now)]

    def stop(self, timeout_s: float) -> None:
        for pool in self._all:
            pool.stop(timeout_s)

    @property
    def database_problem(self) -> str | None:
        """Why the last database round trip of a handler failed, in any pool; None once
        each pool's last one succeeded."""
        return next((p.database_problem for p in self._all if p.database_problem), None)
