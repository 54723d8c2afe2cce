"""Where ``async def`` handlers run: one event loop per worker thread.

Each worker thread that meets an async handler creates one event loop (lazily) and runs
each handler coroutine on it to completion with ``run_until_complete``; the loop is
closed when the thread ends. So async handlers run with the same concurrency as sync
ones (``concurrency`` worker threads, one message each at a time) and go through the same
steps: inbox row, handler, commit, then ack. They exist so that asyncio code (asyncpg,
httpx, aiohttp, aio-pika clients, psycopg's ``AsyncConnection``) runs natively in a
handler, not to handle more messages at once: they even cost a little more CPU per
message than plain ones (the loop, and psycopg's async I/O). Tasks a handler starts and
does not await only run while the loop runs a later handler: await them.

Why not one loop for all async handlers, with many messages in flight on it? The inbox
transaction, the timeout's kill and the drain are per worker; one loop per worker keeps
them exactly as they are for plain handlers, and a handler that blocks its loop (a sync
call by mistake) stalls only its own worker.

A handler past its timeout is interrupted from the runner's thread: its task is cancelled
(the handler sees ``asyncio.CancelledError`` at its ``await``; psycopg then cancels the
statement it waits on), and the loop refuses any further coroutine. The worker kills the
database session as for a sync handler, so nothing the handler did can commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from outbox_relay.consumer.errors import HandlerCancelledError, HandlerTimeoutError

EXECUTOR_SHUTDOWN_S = 5.0


class HandlerLoop:
    """An event loop owned by one thread, created on first use; :meth:`interrupt` from
    any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._interrupted = False
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, object], *, name: str) -> object:
        """Run ``coroutine`` to completion on this thread's loop; its result. Raises what
        it raises; HandlerTimeoutError when :meth:`interrupt` cancelled it (or came
        first); ``name`` names the handler in errors."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        with self._lock:
            if self._interrupted:
                coroutine.close()
                raise HandlerTimeoutError(f"handler {name} was interrupted before it started")
            # The task copies the caller's context (trace context included).
            task = loop.create_task(coroutine, name=f"handler {name}")
            self._task = task
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError as exc:
            if self._interrupted:
                raise HandlerTimeoutError(f"handler {name} was cancelled at its timeout") from exc
            # Cancelled by its own code: a failure like any other, retried.
            raise HandlerCancelledError(
                f"handler {name} was cancelled by its own code (asyncio.CancelledError "
                "reached the SDK); catch it in the handler, or raise Retry to try later"
            ) from exc
        finally:
            with self._lock:
                self._task = None

    def interrupt(self) -> None:
        """From any thread: cancel the running handler's task, and refuse later ones."""
        with self._lock:
            self._interrupted = True
            task, loop = self._task, self._loop
        if task is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

    def close(self) -> None:
        """Finish async generators and the default executor, then close the loop."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            # Bounded: an executor job that never ends must not hold the thread for good.
            loop.run_until_complete(
                asyncio.wait_for(loop.shutdown_default_executor(), EXECUTOR_SHUTDOWN_S)
            )
        except asyncio.TimeoutError:
            pass
        finally:
            loop.close()
