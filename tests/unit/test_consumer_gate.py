"""The flow gate with an in-memory store: what waits, what starts when, what goes back."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer import gate as gate_module
from outbox_relay.consumer.app import Handler
from outbox_relay.consumer.gate import FlowGate
from outbox_relay.consumer.message import Delivery
from outbox_relay.consumer.rate_limit import RateLimit, lease_span_s
from outbox_relay.consumer.runner import Runner
from outbox_relay.consumer.worker import Job, Kind, Result
from outbox_relay.errors import StoreUnavailableError
from outbox_relay.observability.consumer_metrics import ConsumerMetrics
from outbox_relay.store.flow import Lease


class FakeFlowStore:
    """consumer_flow in a dict, on this process's clock; the same arithmetic as the SQL."""

    def __init__(self) -> None:
        self.tat: dict[tuple[str, str], float] = {}
        self.paused_until: dict[str, float] = {}
        self.leases: list[tuple[str, str, int]] = []
        self.down = False
        self.round_trips = 0
        self.pause_checks = 0

    def lease(self, *, consumer: str, key: str, count: int, span_s: float) -> Lease:
        self.round_trips += 1
        if self.down:
            raise StoreUnavailableError("database unavailable while taking tokens")
        now = time.monotonic()
        paused_s = self.paused_until.get(consumer, 0.0) - now
        if paused_s > 0:
            return Lease(start_s=0.0, paused_s=paused_s)
        start = max(self.tat.get((consumer, key), 0.0), now)
        self.tat[consumer, key] = start + span_s
        self.leases.append((consumer, key, count))
        return Lease(start_s=start - now, paused_s=0.0)

    def pause(self, *, consumer: str, seconds: float) -> float:
        if not (math.isfinite(seconds) and seconds > 0):  # as FlowStore.pause
            raise ValueError(f"a pause must last a finite number of seconds above 0: {seconds}")
        now = time.monotonic()
        until = max(self.paused_until.get(consumer, 0.0), now + seconds)
        self.paused_until[consumer] = until
        return until - now

    def paused(self, consumers: Sequence[str]) -> dict[str, float]:
        self.pause_checks += 1
        now = time.monotonic()
        return {c: u - now for c, u in self.paused_until.items() if c in consumers and u > now}

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def handler(**kw: Any) -> Handler[...]:
    app = ConsumerApp(name="app")

    @app.handler(exchange="e", queue=kw.pop("queue", "q"), **kw)
    def on_message(message: Message, tx: Any) -> None:
        pass

    return on_message


def job(h: Handler[...], n: int = 0, headers: dict[str, Any] | None = None) -> Job:
    delivery = Delivery(
        body=b"{}",
        exchange="e",
        routing_key="k",
        redelivered=False,
        queue=h.queue,
        message_id=f"m-{n}",
        content_type="application/json",
        headers=headers or {},
        timestamp=None,
    )
    return Job(delivery, h, token=n)


class Gate:
    def __init__(
        self,
        handlers: list[Handler[...]],
        store: FakeFlowStore | None,
        observer: ConsumerMetrics | None = None,
        **options: Any,
    ) -> None:
        self.started: queue.SimpleQueue[tuple[float, Job]] = queue.SimpleQueue()
        self.started_on: list[str] = []  # the thread that started each job
        self.given_back: list[Result] = []

        def start(j: Job) -> None:
            self.started_on.append(threading.current_thread().name)
            self.started.put((time.monotonic(), j))

        self.gate = FlowGate(
            handlers=handlers,
            store=store,  # type: ignore[arg-type]  # the fake stands in for FlowStore
            submit_to_pool=start,
            give_back=self.given_back.append,
            observer=observer,
            **options,
        )

    def take(self, count: int, timeout_s: float = 5.0) -> list[tuple[float, Job]]:
        return [self.started.get(timeout=timeout_s) for _ in range(count)]


@pytest.fixture
def gate_of() -> Iterator[Any]:
    made: list[Gate] = []

    def make(
        handlers: list[Handler[...]],
        store: FakeFlowStore | None = None,
        observer: ConsumerMetrics | None = None,
        *,
        checked: bool = False,
        **options: Any,
    ) -> Gate:
        made.append(Gate(handlers, store, observer, **options))
        if checked:
            made[-1].gate.check()  # as the runner does before starting it
        made[-1].gate.start()
        return made[-1]

    yield make
    for g in made:
        g.gate.stop()


def test_without_a_limit_or_a_store_deliveries_start_at_once(gate_of: Any) -> None:
    h = handler()
    g = gate_of([h])
    for n in range(3):
        g.gate.submit(job(h, n))
    assert [j.token for _, j in g.take(3, timeout_s=0.5)] == [0, 1, 2]


def test_a_limited_handler_starts_a_burst_then_one_per_interval(gate_of: Any) -> None:
    h = handler(rate_limit=RateLimit(max=2, per=0.2))  # 10/s, a burst of 2
    store = FakeFlowStore()
    g = gate_of([h], store)
    began = time.monotonic()
    for n in range(6):
        g.gate.submit(job(h, n))
    started = [at - began for at, _ in g.take(6)]
    assert started[1] < 0.1  # the burst
    for n in range(2, 6):  # then every 100 ms
        assert started[n] >= (n - 1) * 0.1 - 0.01
    assert len(store.leases) == 6  # one round trip a token at this rate
    assert g.gate.held == 0


def test_each_key_waits_only_for_its_own_bucket(gate_of: Any) -> None:
    h = handler(rate_limit=RateLimit(max=1, per=1.0), rate_limit_key="header:tenant")
    g = gate_of([h], FakeFlowStore())
    for n in range(3):
        g.gate.submit(job(h, n, {"tenant": "noisy"}))
    g.gate.submit(job(h, 10, {"tenant": "quiet"}))
    g.gate.submit(job(h, 11))  # no key: the default bucket
    tokens = {j.token for _, j in g.take(3, timeout_s=0.5)}
    assert tokens == {0, 10, 11}
    assert g.gate.held == 2  # noisy's second and third wait a second each


def most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - first <= window_s) for i, first in enumerate(times))


@pytest.fixture
def leases_of_three(monkeypatch: pytest.MonkeyPatch) -> RateLimit:
    """A slow limit that leases three tokens a round trip (as fast limits do), slow
    enough that the test's timing does not depend on the machine's load: 6 per 0.6 s, a
    token every 100 ms, a lease spanning 300 ms, so leftover tokens expire 300 ms after
    they fell due."""
    monkeypatch.setattr(gate_module, "lease_size", lambda limit: 3)
    limit = RateLimit(max=6, per=0.6)
    assert lease_span_s(limit, 3) == pytest.approx(0.3)
    return limit


def test_leftover_leased_tokens_expire_so_no_burst_exceeds_max_across_processes(
    gate_of: Any, leases_of_three: RateLimit
) -> None:
    """Two processes lease three tokens each and use one: four tokens are left over.
    After a quiet spell the shared bucket is full again (a burst of 6); the leftovers,
    had they been kept, would start four more deliveries at once on top of it."""
    h = handler(rate_limit=leases_of_three)
    store = FakeFlowStore()
    a, b = gate_of([h], store), gate_of([h], store)
    a.gate.submit(job(h, 0))
    a.take(1)
    b.gate.submit(job(h, 1))
    b.take(1)
    assert [count for *_, count in store.leases] == [3, 3]
    time.sleep(1.3)  # the bucket's tat is 0.6 s ahead: full again 0.6 s after that
    for n in range(5):
        a.gate.submit(job(h, 10 + n))
        b.gate.submit(job(h, 20 + n))
    started = [at for at, _ in a.take(5) + b.take(5)]
    # A burst of at most 6 at once, then one every 100 ms (none in the first 50 ms).
    assert most_in_any_window(started, 0.05) <= leases_of_three.max
    assert max(started) - min(started) >= 0.3


def test_a_pause_drops_the_tokens_leased_before_it(
    gate_of: Any, leases_of_three: RateLimit
) -> None:
    h = handler(rate_limit=leases_of_three)
    store = FakeFlowStore()
    g = gate_of([h], store)
    g.gate.submit(job(h, 0))
    g.take(1)  # two tokens of the lease left, usable for 300 ms more
    g.gate.pause(h, 0.1, again=job(h, 1))
    ((_at, started),) = g.take(1)
    assert started.token == 1
    assert len(store.leases) == 2  # its token came from a new lease, after the pause


def test_rate_limited_holds_the_delivery_and_pauses_the_handler(gate_of: Any) -> None:
    h = handler(rate_limit="100/s")
    store = FakeFlowStore()
    g = gate_of([h], store)
    g.gate.pause(h, 0.3, again=job(h, 0))
    g.gate.submit(job(h, 1))
    assert g.started.empty()
    assert g.gate.held == 2
    assert "paused for" in g.gate.describe()
    began = time.monotonic()
    started = g.take(2)
    assert [j.token for _, j in started] == [0, 1]  # the one that raised first
    assert started[0][0] - began >= 0.25
    assert store.paused_until  # shared with the other processes


@pytest.mark.parametrize("seconds", [float("nan"), 0.0, -3.0])
def test_a_pause_not_above_0_pauses_nothing_and_records_nothing(
    gate_of: Any, seconds: float
) -> None:
    """RateLimited refuses such a retry_after; the gate does not trust that: a NaN pause
    would never end, in the database or here."""
    h = handler(rate_limit="100/s")
    store = FakeFlowStore()
    g = gate_of([h], store)
    with capture_logs() as logs:
        g.gate.pause(h, seconds, again=job(h, 0))
        ((_at, started),) = g.take(1, timeout_s=1.0)
    assert started.token == 0
    assert store.paused_until == {}
    assert "paused" not in g.gate.describe()
    assert not [e for e in logs if e["log_level"] in ("error", "warning")]


def test_the_gate_reports_the_time_waited_for_tokens_and_paused(gate_of: Any) -> None:
    h = handler(rate_limit=RateLimit(max=1, per=0.2), name="send_sms")
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, handlers=[(h.queue, h.name)])
    store = FakeFlowStore()
    g = gate_of([h], store, metrics)
    labels = {"queue": h.queue, "handler": "send_sms"}

    def value(name: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    g.gate.submit(job(h, 0))
    g.gate.submit(job(h, 1))
    g.take(2)
    assert value("outbox_relay_consumer_rate_limit_wait_seconds_count") == 2
    waited = value("outbox_relay_consumer_rate_limit_wait_seconds_sum")
    assert 0.15 <= waited < 1.0  # the second waited a token's interval, 200 ms
    assert value("outbox_relay_consumer_paused_seconds_total") == 0

    g.gate.pause(h, 0.3, again=job(h, 2))  # RateLimited(retry_after=0.3) in this process
    g.take(1)
    assert value("outbox_relay_consumer_paused_seconds_total") == pytest.approx(0.3, abs=0.05)

    store.pause(consumer=h.inbox_key, seconds=0.4)  # another process's RateLimited
    g.gate.submit(job(h, 3))
    g.take(1)
    assert value("outbox_relay_consumer_paused_seconds_total") == pytest.approx(0.7, abs=0.1)
    assert value("outbox_relay_consumer_rate_limit_wait_seconds_count") == 4


@pytest.mark.parametrize("checked", [False, True], ids=["started", "checked and started"])
def test_a_pause_from_another_process_holds_a_handler_without_a_limit(
    gate_of: Any, checked: bool
) -> None:
    """Also the first delivery after start: it waits for the gate to ask the database
    (a view read before consuming could predate a pause by up to a second)."""
    h = handler()
    store = FakeFlowStore()
    g = gate_of([h], store, checked=checked)
    store.pause(consumer=h.inbox_key, seconds=0.3)  # another process got a 429
    began = time.monotonic()
    g.gate.submit(job(h, 0))
    ((at, _j),) = g.take(1)
    assert at - began >= 0.25
    assert g.gate.deliveries_waited == 1
    for n in range(1, 4):  # the view is fresh now: these start on arrival, on this thread
        g.gate.submit(job(h, n))
    assert [j.token for _, j in g.take(3, timeout_s=0)] == [1, 2, 3]
    assert g.started_on[1:] == [threading.current_thread().name] * 3
    assert g.gate.deliveries_waited == 1


def test_without_shared_pauses_a_handler_without_a_limit_never_asks_the_database(
    gate_of: Any,
) -> None:
    h = handler()
    store = FakeFlowStore()
    store.pause(consumer=h.inbox_key, seconds=30)  # another process's pause: not seen here
    g = gate_of([h], store, checked=True, share_pauses=False)
    for n in range(3):
        g.gate.submit(job(h, n))
    assert [j.token for _, j in g.take(3, timeout_s=0)] == [0, 1, 2]
    time.sleep(0.1)  # the gate thread's turns
    assert (store.pause_checks, g.gate.deliveries_waited) == (0, 0)


def test_a_database_outage_while_waiting_gives_the_deliveries_back(gate_of: Any) -> None:
    h = handler(rate_limit="5/s")
    store = FakeFlowStore()
    store.down = True
    g = gate_of([h], store)
    g.gate.submit(job(h, 0))
    g.gate.submit(job(h, 1))
    deadline = time.monotonic() + 5
    while len(g.given_back) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.kind for r in g.given_back] == [Kind.REQUEUE, Kind.REQUEUE]
    assert all(r.attempt == 1 for r in g.given_back)
    assert g.given_back[0].error is not None
    assert "database unavailable" in g.given_back[0].error.message
    assert g.gate.held == 0


def test_take_held_returns_everything_waiting(gate_of: Any) -> None:
    h = handler(rate_limit=RateLimit(max=1, per=3600))
    g = gate_of([h], FakeFlowStore())
    for n in range(4):
        g.gate.submit(job(h, n))
    g.take(1)
    deadline = time.monotonic() + 2
    while g.gate.held < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(j.token for j in g.gate.take_held()) == [1, 2, 3]
    assert g.gate.held == 0
    assert "limit 1/h" in g.gate.describe()


def test_a_limit_so_slow_that_held_deliveries_near_the_consumer_timeout_is_named() -> None:
    h = handler(rate_limit="1/m", name="nightly_report")
    gate = FlowGate(
        handlers=[h],
        store=None,
        submit_to_pool=lambda j: None,
        give_back=print,
        prefetch={h.queue: 12},
    )
    with capture_logs() as logs:
        gate.start()
        gate.stop()
    (warning,) = [e for e in logs if e["event"] == "consumer.rate_limit_slow"]
    assert warning["handler"] == "nightly_report"
    assert warning["longest_wait_s"] == 720
    assert "prefetch_multiplier" in warning["hint"]


def test_the_slow_limit_warning_takes_each_handlers_own_prefetch() -> None:
    """A handler with its own concurrency holds its own pool's prefetch, not the app's:
    the app's prefetch is 4 x 2 = 8 here, 800 s at 1 per 100 s."""
    app = ConsumerApp(
        name="reports",
        concurrency=4,
        prefetch_multiplier=2,
        database_url="postgresql://db.invalid/x",  # never connected: the gate only starts
        amqp_url="amqp://broker.invalid",
    )
    slow = RateLimit(max=1, per=100)
    for name, concurrency in (("shared", None), ("narrow", 1), ("wide", 10)):
        app.handler(
            exchange="e", queue=f"q.{name}", name=name, rate_limit=slow, concurrency=concurrency
        )(lambda message: None)
    runner = Runner(app, app.settings())
    with capture_logs() as logs:
        runner._gate.start()
        runner._gate.stop()
    warned = {
        e["handler"]: (e["prefetch"], e["longest_wait_s"])
        for e in logs
        if e["event"] == "consumer.rate_limit_slow"
    }
    assert warned == {"shared": (8, 800), "wide": (20, 2000)}  # narrow: 2 x 100 s
