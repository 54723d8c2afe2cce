"""Results on their way from the worker threads to the runner's I/O thread.

Workers never touch pika: they queue their result here and wake the I/O thread with
``add_callback_threadsafe``, the one thread-safe call of a pika connection. One wake-up
at a time is on its way: it settles every result queued by then.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import pika
import pika.exceptions

from outbox_relay.consumer.worker import Result


class Results:
    """``connection()``: the I/O thread's connection (None between connections);
    ``on_wake``: what the I/O thread runs when woken."""

    def __init__(
        self,
        *,
        connection: Callable[[], pika.BlockingConnection | None],
        on_wake: Callable[[], None],
    ) -> None:
        self._connection = connection
        self._on_wake = on_wake
        self._queue: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = False

    def put(self, result: Result) -> None:
        """From a worker thread: queue the result and wake the I/O thread, unless a wake-up
        is already on its way (one wake-up settles every result queued by then)."""
        self._queue.put(result)
        with self._lock:
            if self._pending:
                return
            self._pending = True
        self.wake()

    def wake(self) -> None:
        """From any thread: have the I/O thread run ``on_wake`` soon."""
        conn = self._connection()
        if conn is None:
            return
        # Closed meanwhile: the loop settles what is queued when it runs again.
        with contextlib.suppress(pika.exceptions.AMQPError, OSError, RuntimeError):
            conn.add_callback_threadsafe(self._on_wake)

    def woken(self) -> None:
        """In the I/O thread, before taking the results: a result queued from now on
        wakes it again."""
        with self._lock:
            self._pending = False

    def take(self) -> Result | None:
        """In the I/O thread: the next queued result, or None when none is left."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None
