"""The worker pool with an in-memory session: what runs, what commits, what is reported."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pydantic
import pytest

from outbox_relay.consumer import ConsumerApp, Message, RateLimited, Reject, Retry
from outbox_relay.consumer.app import Handler
from outbox_relay.consumer.message import Delivery
from outbox_relay.consumer.worker import Job, Kind, Result, WorkerPool
from outbox_relay.errors import StoreUnavailableError


class ConnectionLostError(Exception):
    """What FakeSession takes for a lost connection (the real session asks psycopg)."""


class FakeSession:
    """Stands in for HandlerSession: an inbox in a set, a log of what happened."""

    def __init__(self, inbox: set[tuple[str, str]], log: list[str]) -> None:
        self.inbox, self.log = inbox, log
        self.pending: tuple[str, str] | None = None
        self.connection = "tx"
        self.async_connection = "async tx"
        self.fail_begin = False

    def begin(self, *, consumer: str, message_id: str) -> bool:
        if self.fail_begin:
            raise StoreUnavailableError("database unavailable")
        key = (consumer, message_id)
        if key in self.inbox:
            return False
        self.pending = key
        return True

    def commit(self) -> None:
        if self.pending:
            self.inbox.add(self.pending)
        self.log.append(f"commit {self.pending}")
        self.pending = None

    def rollback(self) -> None:
        self.log.append("rollback")
        self.pending = None

    def kill(self) -> None:
        self.log.append("kill")

    def lost_connection(self, exc: BaseException) -> StoreUnavailableError | None:
        if isinstance(exc, ConnectionLostError) or isinstance(exc.__cause__, ConnectionLostError):
            return StoreUnavailableError(f"database connection lost in the handler: {exc}")
        return None

    def close(self) -> None:
        pass


def delivery(message_id: str | None = "m-1", body: bytes = b"{}") -> Delivery:
    return Delivery(
        body=body,
        exchange="orders",
        routing_key="k",
        redelivered=False,
        message_id=message_id,
        content_type="application/json",
        headers={},
        timestamp=None,
        queue="q",
    )


class Harness:
    def __init__(self, *, size: int = 2, with_db: bool = True) -> None:
        self.inbox: set[tuple[str, str]] = set()
        self.log: list[str] = []
        self.sessions: list[FakeSession] = []
        self.results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.committed: list[str | None] = []
        self.pool = WorkerPool(
            size=size,
            consumer="app",
            new_session=self._session if with_db else None,
            on_result=self.results.put,
            after_commit=[lambda m: self.committed.append(m.message_id)],
        )
        self.pool.start()

    def _session(self) -> Any:
        session = FakeSession(self.inbox, self.log)
        self.sessions.append(session)
        return session

    def run(self, handler: Handler[...], d: Delivery) -> Result:
        self.pool.submit(Job(d, handler, token=None))
        return self.results.get(timeout=5)


def handler(func: Any, **kw: Any) -> Handler[...]:
    app = ConsumerApp(name="app")
    app.handler(exchange="orders", queue="q", **kw)(func)
    return app.handlers[0]


@pytest.fixture
def harness() -> Harness:
    h = Harness()
    yield h  # type: ignore[misc]
    h.pool.stop(2)


def test_a_new_message_runs_the_handler_then_commits_with_its_inbox_row(
    harness: Harness,
) -> None:
    seen: list[tuple[Message, Any]] = []
    result = harness.run(handler(lambda message, tx: seen.append((message, tx))), delivery())
    assert result.kind is Kind.HANDLED
    assert [(m.message_id, tx) for m, tx in seen] == [("m-1", "tx")]
    assert harness.inbox == {("app:q", "m-1")}
    assert harness.committed == ["m-1"]


def test_a_duplicate_commits_without_running_the_handler(harness: Harness) -> None:
    harness.inbox.add(("app:q", "m-1"))
    calls: list[Message] = []
    result = harness.run(handler(lambda message, tx: calls.append(message)), delivery())
    assert result.kind is Kind.DUPLICATE
    assert calls == []
    assert harness.committed == []


@pytest.mark.parametrize(
    ("error", "kind", "delay"),
    [
        (ValueError("boom"), Kind.RETRY, None),
        (Retry("later", delay=7), Kind.RETRY, 7),
        (Reject("never"), Kind.PARK, None),
    ],
)
def test_a_failure_rolls_back_and_reports_what_to_do(
    harness: Harness, error: Exception, kind: Kind, delay: float | None
) -> None:
    def fail(message: Message, tx: Any) -> None:
        raise error

    result = harness.run(handler(fail), delivery())
    assert result.kind is kind
    assert result.requested_delay_s == delay
    assert result.error is not None
    assert result.error.message == str(error)
    assert harness.log == ["rollback"]
    assert harness.inbox == set()


def test_an_undecodable_body_is_parked_without_touching_the_handler(harness: Harness) -> None:
    calls: list[Message] = []
    result = harness.run(handler(lambda message, tx: calls.append(message)), delivery(body=b"{"))
    assert result.kind is Kind.PARK
    assert result.error is not None
    assert "not valid JSON" in result.error.message
    assert calls == []


def test_a_database_outage_gives_the_delivery_back(harness: Harness, monkeypatch: Any) -> None:
    monkeypatch.setattr("outbox_relay.consumer.worker.REQUEUE_PAUSE_S", 0.0)
    harness.run(handler(lambda message, tx: None), delivery("warm-up"))
    for session in harness.sessions:
        session.fail_begin = True
    result = harness.run(handler(lambda message, tx: None), delivery("m-2"))
    assert result.kind is Kind.REQUEUE


def test_a_timed_out_handler_is_abandoned_and_replaced_and_never_commits() -> None:
    harness = Harness(size=1)
    release = threading.Event()

    def slow(message: Message, tx: Any) -> None:
        if message.message_id == "slow":
            release.wait(5)

    h = handler(slow, timeout=0.2)
    harness.pool.submit(Job(delivery("slow"), h, token=None))
    harness.pool.submit(Job(delivery("fast"), h, token=None))
    deadline = time.monotonic() + 5
    expired: list[Result] = []
    while not expired and time.monotonic() < deadline:
        expired = harness.pool.expire(time.monotonic())
        time.sleep(0.05)
    assert [(r.kind, r.error.type if r.error else None) for r in expired] == [
        (Kind.RETRY, "HandlerTimeoutError")
    ]
    fast = harness.results.get(timeout=5)  # the replacement worker took the next job
    assert fast.job.delivery.message_id == "fast"
    release.set()
    time.sleep(0.2)
    assert harness.results.empty()  # the abandoned handler's late result is ignored
    assert ("app:q", "slow") not in harness.inbox
    assert "kill" in harness.log
    harness.pool.stop(2)


def test_handlers_without_a_database_need_no_session() -> None:
    harness = Harness(with_db=False)
    result = harness.run(handler(lambda message: None), delivery(message_id=None))
    assert result.kind is Kind.HANDLED
    assert harness.sessions == []
    harness.pool.stop(2)


def test_take_unstarted_returns_what_no_worker_began() -> None:
    harness = Harness(size=1)
    release = threading.Event()
    h = handler(lambda message, tx: release.wait(5))
    jobs = [Job(delivery(f"m-{n}"), h, token=n) for n in range(4)]
    for job in jobs:
        harness.pool.submit(job)
    time.sleep(0.2)
    taken = harness.pool.take_unstarted()
    release.set()
    assert [j.token for j in taken] == [1, 2, 3]
    assert harness.results.get(timeout=5).job.token == 0
    harness.pool.stop(2)


def test_after_a_delivery_given_back_for_the_database_the_next_waits_to_be_taken_back(
    monkeypatch: Any,
) -> None:
    """The database answers again right after the give-back: the delivery queued behind
    it must not be handled first (its key's order), but go back to the queue after it."""
    monkeypatch.setattr("outbox_relay.consumer.worker.REQUEUE_PAUSE_S", 0.0)
    harness = Harness(size=1)

    def on_message(message: Message, tx: Any) -> None:
        if message.message_id == "m-0":
            raise ConnectionLostError("server closed the connection unexpectedly")

    h = handler(on_message)
    for n in range(3):
        harness.pool.submit(Job(delivery(f"m-{n}"), h, token=n))
    given_back = harness.results.get(timeout=5)
    assert (given_back.kind, given_back.job.token) == (Kind.REQUEUE, 0)
    with pytest.raises(queue.Empty):
        harness.results.get(timeout=0.3)
    assert harness.pool.held
    assert [job.token for job in harness.pool.take_unstarted()] == [1, 2]
    assert not harness.pool.held
    assert harness.run(h, delivery("m-3")).kind is Kind.HANDLED  # going on again
    assert harness.inbox == {("app:q", "m-3")}
    harness.pool.stop(2)


class Order(pydantic.BaseModel):
    order_id: int


def test_a_payload_that_does_not_fit_is_parked_at_once_with_the_validation_error(
    harness: Harness,
) -> None:
    calls: list[Order] = []

    def on_order(order: Order, tx: Any) -> None:
        calls.append(order)

    result = harness.run(handler(on_order), delivery(body=b'{"order_id": "seven"}'))
    assert result.kind is Kind.PARK
    assert result.error is not None
    assert result.error.type == "outbox_relay.consumer.errors.InvalidPayloadError"
    assert "does not fit Order" in result.error.message
    assert "order_id" in result.error.message
    assert "ValidationError" in result.error.trace
    assert calls == []
    assert harness.inbox == set()


def test_a_fitting_payload_reaches_the_handler_as_its_type(harness: Harness) -> None:
    calls: list[Order] = []

    def on_order(order: Order, tx: Any) -> None:
        calls.append(order)

    result = harness.run(handler(on_order), delivery(body=b'{"order_id": 7}'))
    assert result.kind is Kind.HANDLED
    assert calls == [Order(order_id=7)]


def test_a_lost_connection_in_the_handler_gives_the_delivery_back_without_an_attempt(
    harness: Harness, monkeypatch: Any
) -> None:
    monkeypatch.setattr("outbox_relay.consumer.worker.REQUEUE_PAUSE_S", 0.0)

    def fail(message: Message, tx: Any) -> None:
        raise RuntimeError("wrapped") from ConnectionLostError("terminating connection")

    result = harness.run(handler(fail, max_attempts=1), delivery())
    assert result.kind is Kind.REQUEUE  # not parked, though this was the last attempt
    assert result.error is not None
    assert "connection lost in the handler" in result.error.message
    assert harness.log[-1] == "rollback"
    assert harness.pool.database_problem is not None
    assert harness.inbox == set()


def test_a_lost_connection_in_an_async_handler_is_given_back_too(
    harness: Harness, monkeypatch: Any
) -> None:
    monkeypatch.setattr("outbox_relay.consumer.worker.REQUEUE_PAUSE_S", 0.0)

    async def fail(message: Message, tx: Any) -> None:
        raise ConnectionLostError("server closed the connection unexpectedly")

    assert harness.run(handler(fail), delivery()).kind is Kind.REQUEUE


@pytest.mark.parametrize(
    ("kwargs", "error", "kind"),
    [
        ({"park_on": KeyError}, KeyError("sku"), Kind.PARK),
        ({"park_on": KeyError}, TimeoutError(), Kind.RETRY),
        ({"retry_on": TimeoutError}, KeyError("sku"), Kind.PARK),
        ({"retry_on": TimeoutError}, TimeoutError(), Kind.RETRY),
        ({"retry_on": TimeoutError}, Retry("asked"), Kind.RETRY),
    ],
)
def test_retry_on_and_park_on_decide_a_failure(
    harness: Harness, kwargs: dict[str, Any], error: Exception, kind: Kind
) -> None:
    def fail(message: Message, tx: Any) -> None:
        raise error

    result = harness.run(handler(fail, **kwargs), delivery())
    assert result.kind is kind
    assert result.attempt == 1
    assert result.error is not None
    assert result.error.type.endswith(type(error).__qualname__)
    assert harness.log[-1] == "rollback"


def test_rate_limited_is_held_for_a_pause_without_an_attempt(harness: Harness) -> None:
    def slow_down(message: Message, tx: Any) -> None:
        raise RateLimited(retry_after=30)

    result = harness.run(handler(slow_down), delivery())
    assert (result.kind, result.requested_delay_s, result.attempt) == (Kind.PAUSED, 30.0, 1)
    assert harness.log == ["rollback"]


def test_a_bad_rate_limited_is_a_failure_of_the_handler_retried_with_its_error(
    harness: Harness,
) -> None:
    """RateLimited(retry_after=nan) refuses to be made: the handler fails with that
    ValueError, retried with an attempt counted like any failure, and nothing is paused."""

    def nan_after(message: Message, tx: Any) -> None:
        raise RateLimited(retry_after=float("nan"))

    result = harness.run(handler(nan_after), delivery())
    assert (result.kind, result.requested_delay_s, result.attempt) == (Kind.RETRY, None, 1)
    assert result.error is not None
    assert result.error.type == "ValueError"
    assert "RateLimited(retry_after=nan): retry_after must be a finite number" in (
        result.error.message
    )
    assert harness.log == ["rollback"]


def test_a_rate_limited_keeps_the_retry_after_it_was_checked_with() -> None:
    """The consumer pauses for ``retry_after`` as it is: it cannot be changed after the
    check made when the exception was made."""
    error = RateLimited(retry_after=5)
    with pytest.raises(AttributeError):
        error.retry_after = -1.0  # type: ignore[misc]
    assert error.retry_after == 5.0


def test_a_timed_out_handler_whose_killed_connection_fails_is_no_outage() -> None:
    harness = Harness(size=1)
    release = threading.Event()

    def slow(message: Message, tx: Any) -> None:
        release.wait(5)  # meanwhile the pool kills its session at the timeout
        raise ConnectionLostError("terminating connection due to administrator command")

    harness.pool.submit(Job(delivery("slow"), handler(slow, timeout=0.1), token=None))
    deadline = time.monotonic() + 5
    expired: list[Result] = []
    while not expired and time.monotonic() < deadline:
        expired = harness.pool.expire(time.monotonic())
        time.sleep(0.02)
    assert [r.kind for r in expired] == [Kind.RETRY]
    release.set()
    assert wait_until(lambda: harness.log.count("rollback") == 1)
    time.sleep(0.1)
    assert harness.results.empty()  # no requeue reported for the abandoned job
    assert harness.pool.database_problem is None  # readiness unaffected
    harness.pool.stop(2)


def wait_until(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False
