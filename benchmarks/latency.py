"""Commit-to-delivery latency at a steady offered load, one message per transaction.

The producer writes one message per transaction at a fixed rate and notes the time right
after COMMIT returns; a consumer process on the same machine notes when each message
arrives. Both use CLOCK_MONOTONIC, which Linux shares between processes. The naive 1 s
poller is the baseline, measured the same way in the same run.

The ceiling is the dual write the outbox replaces, measured the same way in the same run:
each producer commits a transaction holding a plain row instead of the outbox row, then
publishes the message itself on a channel of its own, without waiting for a confirm
(waiting for each one, four producers fell short of the offered rate on a slow machine).
It is what commit to delivery costs on the same producers, database, broker and consumer
without the relay or its load. The dual write's producer publishes in the same thread,
right after its COMMIT returns and the commit time is noted, as an application would:
the message waits for nothing else. The relay and the dual write run in alternating
rounds, their latencies pooled per side, and the headline figures are the relay's p50
and p99 over the dual write's (target: at most 2 x); each round's ratio comes along.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import psycopg

import outbox_relay
from benchmarks import naive
from benchmarks.common import (
    ROUTING_KEY,
    Env,
    Figure,
    Report,
    Route,
    broker_route,
    median,
    outbox_schema,
    payload,
    percentile,
    query,
    relay_process,
    wait_listening,
)

SCENARIO = "latency"
RATE_PER_S = 1000
SEQ_DIGITS = 12
PRODUCERS = 4
DURATION_S = 30.0  # of the relay's runs in all, and of the dual write's
ROUNDS = 4  # runs of each, alternating which goes first
BASELINE_S = 10.0
DEADLINE_S = 180
# The headline figures: the relay's percentiles over the dual write's, same run.
RATIO_KEYS = ("p50", "p99")
RATIO_TARGET = 2.0

# What runs beside the producers, given the schema and the route: the relay, the naive
# poller, or the ceiling's table.
Setting = Callable[[Env, str, Route], AbstractContextManager[Any]]
# Writes a message in a transaction of its own and commits it.
Write = Callable[[psycopg.Connection[Any], bytes], None]
# Runs right after the commit, off the clock: the ceiling's producers publish there.
AfterCommit = Callable[[bytes], None]
# One per producer thread: how it writes, and what it does after each commit.
Producer = Callable[[Env, str, Route], AbstractContextManager[tuple[Write, AfterCommit]]]


def consume(
    amqp_url: str,
    queue: str,
    expected: int,
    ready: multiprocessing.synchronize.Event,
    results: Any,
) -> None:
    """In a child process: receive ``expected`` messages, send back their arrival times.

    Reconnects when the broker closes the connection (the services are shared), until
    every message arrived or DEADLINE_S passed."""
    arrivals: dict[int, float] = {}
    deadline = time.monotonic() + DEADLINE_S
    first = True
    while len(arrivals) < expected and time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            channel = conn.channel()
            channel.basic_qos(prefetch_count=1000)
            if first:
                ready.set()
                first = False
            for _method, _props, body in channel.consume(
                queue, auto_ack=True, inactivity_timeout=1.0
            ):
                if body is not None:
                    arrivals[int(body[:SEQ_DIGITS])] = time.monotonic()
                if len(arrivals) >= expected or time.monotonic() > deadline:
                    break
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()
        except pika.exceptions.AMQPError:
            time.sleep(0.5)
    results.put(arrivals)


@dataclass
class Latencies:
    """Commit-to-delivery times of one or more runs, pooled; per run, the messages sent,
    the rate reached and the run's own p50."""

    ms: list[float] = field(default_factory=list)
    sent: int = 0
    offered: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    runs: list[list[float]] = field(default_factory=list)

    def add(self, other: Latencies) -> None:
        self.ms += other.ms
        self.sent += other.sent
        self.offered += other.offered
        self.p50s += other.p50s
        self.runs += other.runs

    def round_figures(self, key: str) -> list[float]:
        """``key`` (see :meth:`figure`) of each run on its own."""
        return [Latencies(run).figure(key) for run in self.runs]

    def figure(self, key: str) -> float:
        """``max``, or a percentile named ``pNN``."""
        if key == "max":
            return max(self.ms)
        return percentile(self.ms, float(key.removeprefix("p")))


def measure(
    env: Env, beside: Setting, *, duration_s: float, producer: Producer | None = None
) -> Latencies:
    count = int(RATE_PER_S * duration_s)
    context = multiprocessing.get_context("spawn")
    with outbox_schema(env.database_url) as schema, broker_route(env.amqp_url) as route:
        ready, results = context.Event(), context.Queue()
        consumer = context.Process(
            target=consume, args=(env.amqp_url, route.queue, count, ready, results), daemon=True
        )
        consumer.start()
        try:
            ready.wait(20)
            with beside(env, schema, route):
                committed, offered = produce(env, schema, route, count, producer or outbox_producer)
                arrivals: dict[int, float] = results.get(timeout=120)
            consumer.join(10)
        finally:
            if consumer.is_alive():  # it would go on reconnecting to a deleted queue
                consumer.terminate()
                consumer.join(5)
    latencies_ms = [(arrivals[i] - committed[i]) * 1000 for i in committed if i in arrivals]
    if len(latencies_ms) < 0.99 * count:  # a cut connection loses what auto_ack had taken
        raise AssertionError(f"only {len(latencies_ms)} of {count} messages arrived")
    return Latencies(latencies_ms, count, [offered], [percentile(latencies_ms, 50)], [latencies_ms])


def produce(
    env: Env, schema: str, route: Route, count: int, producer: Producer
) -> tuple[dict[int, float], float]:
    """One message per transaction at RATE_PER_S in total, from PRODUCERS threads (one
    connection cannot commit that fast on every machine); returns commit times and the
    rate reached. The schedule starts once every thread has connected; an error in one
    ends them all and is raised."""
    committed: dict[int, float] = {}
    body = payload()
    started = [0.0]

    def begin() -> None:
        started[0] = time.monotonic()

    ready = threading.Barrier(PRODUCERS, action=begin)
    failed = threading.Event()

    def run(first: int) -> None:
        try:
            with (
                psycopg.connect(env.database_url) as conn,
                producer(env, schema, route) as (write, after_commit),
            ):
                ready.wait()
                for i in range(first, count, PRODUCERS):
                    if failed.is_set():
                        return
                    delay = started[0] + i / RATE_PER_S - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    message = f"{i:0{SEQ_DIGITS}d}".encode() + body[SEQ_DIGITS:]
                    write(conn, message)
                    committed[i] = time.monotonic()
                    after_commit(message)
        except BaseException:
            failed.set()  # the others stop at their next message,
            ready.abort()  # or stop waiting for this one
            raise

    with ThreadPoolExecutor(PRODUCERS) as pool:
        futures = [pool.submit(run, n) for n in range(PRODUCERS)]
    errors = [e for e in (f.exception() for f in futures) if e is not None]
    if errors:  # the first cause, not a thread that merely saw the barrier broken
        errors.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))
        raise errors[0]
    return committed, count / (max(committed.values()) - started[0])


@contextlib.contextmanager
def outbox_producer(_env: Env, schema: str, route: Route) -> Iterator[tuple[Write, AfterCommit]]:
    """``publish`` in the transaction; the relay does the rest."""

    def write(conn: psycopg.Connection[Any], message: bytes) -> None:
        outbox_relay.publish(
            conn,
            exchange=route.exchange,
            routing_key=ROUTING_KEY,
            payload=message,
            content_type="application/octet-stream",
            schema=schema,
        )
        conn.commit()

    yield write, _nothing


@contextlib.contextmanager
def direct_producer(env: Env, schema: str, route: Route) -> Iterator[tuple[Write, AfterCommit]]:
    """The dual write: a plain row in the transaction, then the message published by the
    producer itself after the commit, no confirm awaited."""
    insert = query("plain_row", schema)
    properties = pika.BasicProperties(
        content_type="application/octet-stream", delivery_mode=pika.DeliveryMode.Persistent
    )
    connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    try:
        channel = connection.channel()

        def write(conn: psycopg.Connection[Any], message: bytes) -> None:
            conn.execute(insert, {"payload": message})
            conn.commit()

        def publish(message: bytes) -> None:
            channel.basic_publish(route.exchange, ROUTING_KEY, message, properties)

        yield write, publish
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def _nothing(_message: bytes) -> None:
    pass


@contextlib.contextmanager
def the_relay(env: Env, schema: str, _route: Route) -> Any:
    with relay_process(env, schema) as process:
        wait_listening(env.database_url, schema)
        yield process


@contextlib.contextmanager
def plain_table(env: Env, schema: str, _route: Route) -> Iterator[None]:
    """No relay: the ceiling's producers publish themselves, into the table made here."""
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(query("plain_table", schema))
    yield


@contextlib.contextmanager
def naive_poller(env: Env, schema: str, _route: Route) -> Any:
    with naive.NaiveRelay(env.database_url, env.amqp_url, schema, poll_interval_s=1.0) as relay:
        time.sleep(1.0)  # let it connect
        yield relay


def run(env: Env, report: Report) -> None:
    """The relay and the dual write in alternating runs (ROUNDS of them, DURATION_S in
    all for each, their latencies pooled): each goes first as often as the other, and
    neither always meets the machine the other has just left. Then the naive poller."""
    rounds, each_s = (1, 3.0) if env.quick else (ROUNDS, DURATION_S / ROUNDS)
    relay, ceiling = Latencies(), Latencies()
    for n in range(rounds):
        runs = [(relay, the_relay, outbox_producer), (ceiling, plain_table, direct_producer)]
        for pooled, beside, producer in runs if n % 2 == 0 else reversed(runs):
            pooled.add(measure(env, beside, duration_s=each_s, producer=producer))
    baseline = measure(env, naive_poller, duration_s=3.0 if env.quick else BASELINE_S)
    per_round = {
        "offered_per_round": [round(v) for v in relay.offered],
        "p50_per_round": [round(v, 2) for v in relay.p50s],
        "ceiling_offered_per_round": [round(v) for v in ceiling.offered],
        "ceiling_p50_per_round": [round(v, 2) for v in ceiling.p50s],
    }
    # The headline: the relay's commit to delivery over the dual write's, same run.
    for key in RATIO_KEYS:
        ratio = relay.figure(key) / ceiling.figure(key)
        by_round = [
            a / b for a, b in zip(relay.round_figures(key), ceiling.round_figures(key), strict=True)
        ]
        report.add(
            Figure(
                SCENARIO,
                f"commit to delivery {key}, relay / dual write",
                round(ratio, 2),
                "x",
                target=f"<= {RATIO_TARGET:g} x",
                met=ratio <= RATIO_TARGET,
                extra={
                    "relay_ms": round(relay.figure(key), 2),
                    "dual_write_ms": round(ceiling.figure(key), 2),
                    "messages": relay.sent,
                    "rounds": rounds,
                    # Each round's ratio, from the pair of runs next to each other.
                    f"{key}_ratio_per_round": [round(r, 2) for r in by_round],
                    f"{key}_ratio_median_of_rounds": round(median(by_round), 2),
                },
            )
        )
    for key in ("p50", "p95", "p99", "max"):
        value = relay.figure(key)
        report.add(
            Figure(
                SCENARIO,
                # The slowest round's rate: the name tells if one fell short of the load.
                f"commit to delivery {key}, {min(relay.offered):.0f} msg/s offered",
                round(value, 2),
                "ms",
                ceiling=round(ceiling.figure(key), 2),
                baseline=round(baseline.figure(key), 1),
                extra={"messages": relay.sent, "rounds": rounds, **per_round},
            )
        )
