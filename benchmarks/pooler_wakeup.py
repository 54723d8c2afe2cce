"""Commit-to-delivery of single messages when the relay sits behind a transaction pooler.

Through a transaction-mode pooler LISTEN hears nothing, so the relay either polls every
100 ms or LISTENs on ``--listen-database-url`` (see outbox_relay/store/pooler.py). This
measures the wake-up each way, against the relay connected directly, in the same run:
messages are published one at a time through the pooler, at random intervals (so they do
not keep step with the poll), and each is awaited at a queue before the next.

It needs a PgBouncer (or another pooler) in transaction mode in front of the benchmark
database, given as ``OUTBOX_RELAY_BENCH_POOLED_URL``; for example, with Debian's package,
``pool_mode = transaction`` and ``* = host=127.0.0.1 port=5432`` under ``[databases]``.

    OUTBOX_RELAY_BENCH_POOLED_URL=postgresql://postgres@127.0.0.1:6432/test \\
        python -m benchmarks.pooler_wakeup [--messages 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time

import pika
import psycopg

import outbox_relay
from benchmarks.common import (
    Env,
    Route,
    broker_route,
    median,
    outbox_schema,
    percentile,
    relay_process,
)

POOLED_ENV = "OUTBOX_RELAY_BENCH_POOLED_URL"
GAP_S = (0.05, 0.25)  # between one delivery and the next commit, drawn uniformly
SETTLE_S = 3.0  # after the relay starts: it connects, takes its partitions, goes idle


def latencies(env: Env, pooled_url: str, schema: str, route: Route, n: int) -> list[float]:
    """Seconds from each commit (through the pooler) to the message's arrival."""
    found: list[float] = []
    broker = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    channel = broker.channel()
    try:
        with psycopg.connect(pooled_url, prepare_threshold=None) as conn:
            for i in range(n):
                time.sleep(random.uniform(*GAP_S))
                outbox_relay.publish(
                    conn, exchange=route.exchange, routing_key="k", payload={"i": i}, schema=schema
                )
                conn.commit()
                committed = time.monotonic()
                while channel.basic_get(route.queue, auto_ack=True)[0] is None:
                    broker.process_data_events(time_limit=0.0005)
                found.append(time.monotonic() - committed)
    finally:
        broker.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pooler_wakeup")
    parser.add_argument("--messages", type=int, default=60)
    args = parser.parse_args()
    pooled_url = os.environ.get(POOLED_ENV)
    if not pooled_url:
        sys.exit(f"set {POOLED_ENV} to a transaction-mode pooler's URL for the database")
    env = Env.from_environment(quick=False)
    cases = {
        "direct (LISTEN)": (env, ()),
        "pooled, polling": (dataclasses.replace(env, database_url=pooled_url), ()),
        "pooled, --listen-database-url": (
            dataclasses.replace(env, database_url=pooled_url),
            ("--listen-database-url", env.database_url),
        ),
    }
    with outbox_schema(env.database_url) as schema, broker_route(env.amqp_url) as route:
        for name, (case_env, extra) in cases.items():
            with relay_process(case_env, schema, *extra):
                time.sleep(SETTLE_S)
                found = latencies(env, pooled_url, schema, route, args.messages)
            print(
                f"{name:32s} p50 {median(found) * 1e3:6.1f} ms  p95 "
                f"{percentile(found, 95) * 1e3:6.1f} ms  max {max(found) * 1e3:6.1f} ms "
                f"({len(found)} messages)"
            )


if __name__ == "__main__":
    main()
