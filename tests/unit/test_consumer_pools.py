"""A pool per handler with its own concurrency: routing, sizes, prefetch, no starvation."""

from __future__ import annotations

import queue
import threading
from typing import Any

from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.message import Delivery
from outbox_relay.consumer.pools import SHARED, WorkerPools, pool_sizes, prefetch_for
from outbox_relay.consumer.worker import Job, Kind, Result

TIMEOUT_S = 5.0


def delivery(queue_name: str, message_id: str) -> Delivery:
    return Delivery(
        body=b"{}",
        exchange="orders",
        routing_key="k",
        redelivered=False,
        message_id=message_id,
        content_type="application/json",
        headers={},
        timestamp=None,
        queue=queue_name,
    )


def test_prefetch_and_pool_sizes_follow_each_handlers_concurrency() -> None:
    app = ConsumerApp(name="app", concurrency=4, prefetch_multiplier=3)
    app.handler(exchange="x", queue="fast")(lambda message: None)
    app.handler(exchange="x", queue="slow", concurrency=1, name="slow")(lambda message: None)
    settings = app.settings()
    fast, slow = app.handlers
    assert prefetch_for(fast, settings) == 12  # the app's 4 x 3
    assert prefetch_for(slow, settings) == 3  # its own 1 x 3
    assert pool_sizes(app.handlers, settings) == {SHARED: 4, "slow": 1}


def test_without_per_handler_concurrency_there_is_only_the_shared_pool() -> None:
    app = ConsumerApp(name="app", concurrency=2)
    app.handler(exchange="x", queue="a")(lambda message: None)
    app.handler(exchange="x", queue="b")(lambda message: None)
    assert pool_sizes(app.handlers, app.settings()) == {SHARED: 2}


def test_a_busy_handler_with_its_own_pool_does_not_hold_up_the_others() -> None:
    app = ConsumerApp(name="app", concurrency=1)
    release = threading.Event()
    slow_started = threading.Event()

    @app.handler(exchange="x", queue="slow", concurrency=1)
    def slow(message: Message) -> None:
        slow_started.set()
        release.wait(TIMEOUT_S)

    @app.handler(exchange="x", queue="fast")
    def fast(message: Message) -> None: ...

    results: queue.SimpleQueue[Result] = queue.SimpleQueue()
    sessions: list[Any] = []
    pools = WorkerPools(
        app.handlers,
        concurrency=1,
        consumer="app",
        new_session=lambda: sessions.append(1),  # type: ignore[arg-type,func-returns-value]
        on_result=results.put,
        after_commit=[],
    )
    pools.start()
    try:
        for n in range(3):  # more slow messages than its pool: they queue in its own pool
            pools.submit(Job(delivery("slow", f"s-{n}"), slow, token=None))
        assert slow_started.wait(TIMEOUT_S)
        for n in range(3):
            pools.submit(Job(delivery("fast", f"f-{n}"), fast, token=None))
        done = [results.get(timeout=TIMEOUT_S) for _ in range(3)]
        assert sorted(r.job.delivery.message_id or "" for r in done) == ["f-0", "f-1", "f-2"]
        assert {r.kind for r in done} == {Kind.HANDLED}
        assert pools.busy == 1  # the slow handler, still running
        taken = pools.take_unstarted()
        assert sorted(j.delivery.message_id or "" for j in taken) == ["s-1", "s-2"]
    finally:
        release.set()
        pools.stop(2)
    assert sessions == []  # no handler takes tx: no pool opens a database session
