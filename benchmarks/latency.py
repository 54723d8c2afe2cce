"""Commit-to-delivery latency at a steady offered load, one message per transaction.

The producer writes one message per transaction at a fixed rate and notes the time right
after COMMIT returns; a consumer process on the same machine notes when each message
arrives. Both use CLOCK_MONOTONIC, which Linux shares between processes. The naive 1 s
poller is the baseline, measured the same way in the same run.

The ceiling is the dual write the outbox replaces, measured the same way in the same run:
each producer commits the same transaction with a plain row instead of the outbox row,
then publishes the message itself on a channel of its own, without waiting for a confirm
(waiting for each one, four producers fell short of the offered rate on a slow machine). It
is what commit to delivery costs the machine without a relay in between (the same
producers, database, broker and consumer on the same cores), so it shows how much of the
relay's figure the machine itself takes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
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
DEADLINE_S = 180

Starter = Callable[[Env, str], AbstractContextManager[Any]]
# Writes message ``seq`` in a transaction of its own and commits it.
Write = Callable[[psycopg.Connection[Any], int, bytes], None]
# Runs right after the commit, off the clock: the ceiling's producers publish there.
AfterCommit = Callable[[int, bytes], None]
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


def measure(
    env: Env, start_relay: Starter, *, duration_s: float, producer: Producer | None = None
) -> dict[str, float]:
    count = int(RATE_PER_S * duration_s)
    context = multiprocessing.get_context("spawn")
    with outbox_schema(env.database_url) as schema, broker_route(env.amqp_url) as route:
        ready, results = context.Event(), context.Queue()
        consumer = context.Process(
            target=consume, args=(env.amqp_url, route.queue, count, ready, results), daemon=True
        )
        consumer.start()
        ready.wait(20)
        with start_relay(env, schema):
            committed, offered = produce(env, schema, route, count, producer or outbox_producer)
            arrivals: dict[int, float] = results.get(timeout=120)
        consumer.join(10)
    latencies_ms = [(arrivals[i] - committed[i]) * 1000 for i in committed if i in arrivals]
    if len(latencies_ms) < 0.99 * count:  # a cut connection loses what auto_ack had taken
        raise AssertionError(f"only {len(latencies_ms)} of {count} messages arrived")
    return {
        "p50": percentile(latencies_ms, 50),
        "p95": percentile(latencies_ms, 95),
        "p99": percentile(latencies_ms, 99),
        "max": max(latencies_ms),
        "offered": offered,
        "count": count,
    }


def produce(
    env: Env, schema: str, route: Route, count: int, producer: Producer
) -> tuple[dict[int, float], float]:
    """One message per transaction at RATE_PER_S in total, from PRODUCERS threads (one
    connection cannot commit that fast on every machine); returns commit times and the
    rate reached."""
    committed: dict[int, float] = {}
    body = payload()
    started = time.monotonic() + 0.2

    def run(first: int) -> None:
        with psycopg.connect(env.database_url) as conn, producer(env, schema, route) as steps:
            write, after_commit = steps
            for i in range(first, count, PRODUCERS):
                delay = started + i / RATE_PER_S - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                message = f"{i:0{SEQ_DIGITS}d}".encode() + body[SEQ_DIGITS:]
                write(conn, i, message)
                committed[i] = time.monotonic()
                after_commit(i, message)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return committed, count / (max(committed.values()) - started)


@contextlib.contextmanager
def outbox_producer(_env: Env, schema: str, route: Route) -> Iterator[tuple[Write, AfterCommit]]:
    """``publish`` in the transaction; the relay does the rest."""

    def write(conn: psycopg.Connection[Any], _seq: int, message: bytes) -> None:
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
    connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    channel = connection.channel()
    properties = pika.BasicProperties(
        content_type="application/octet-stream", delivery_mode=pika.DeliveryMode.Persistent
    )

    def write(conn: psycopg.Connection[Any], _seq: int, message: bytes) -> None:
        conn.execute(insert, {"payload": message})
        conn.commit()

    def publish(_seq: int, message: bytes) -> None:
        channel.basic_publish(route.exchange, ROUTING_KEY, message, properties)

    try:
        yield write, publish
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def _nothing(_seq: int, _message: bytes) -> None:
    pass


@contextlib.contextmanager
def the_relay(env: Env, schema: str) -> Any:
    with relay_process(env, schema) as process:
        wait_listening(env.database_url, schema)
        yield process


@contextlib.contextmanager
def plain_table(env: Env, schema: str) -> Iterator[None]:
    """No relay: the ceiling's producers publish themselves, into the table made here."""
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(query("plain_table", schema))
    yield


@contextlib.contextmanager
def naive_poller(env: Env, schema: str) -> Any:
    with naive.NaiveRelay(env.database_url, env.amqp_url, schema, poll_interval_s=1.0) as relay:
        time.sleep(1.0)  # let it connect
        yield relay


def run(env: Env, report: Report) -> None:
    duration = 3.0 if env.quick else 30.0
    relay = measure(env, the_relay, duration_s=duration)
    ceiling = measure(env, plain_table, duration_s=duration, producer=direct_producer)
    baseline = measure(env, naive_poller, duration_s=3.0 if env.quick else 10.0)
    targets = {"p50": 2.0, "p99": 5.0}
    for key in ("p50", "p95", "p99", "max"):
        target = targets.get(key)
        report.add(
            Figure(
                SCENARIO,
                f"commit to delivery {key}, {relay['offered']:.0f} msg/s offered",
                round(relay[key], 2),
                "ms",
                ceiling=round(ceiling[key], 2),
                baseline=round(baseline[key], 1),
                target=f"<= {target:g} ms" if target else "",
                met=relay[key] <= target if target else None,
                extra={"messages": relay["count"], "ceiling_offered": round(ceiling["offered"])},
            )
        )
