"""Consumer throughput with the inbox, beside the raw single-connection commit rate
measured in the same run, and without a database.

Prints one JSON line per figure. Run against the local services::

    python -m benchmarks.consumer [--messages N] [--runs R] [--concurrency C]

Services come from OUTBOX_RELAY_BENCH_DATABASE_URL and OUTBOX_RELAY_BENCH_AMQP_URL (the
local defaults otherwise). Every run uses its own schema, exchange and queues and
removes them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import psycopg
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.declare import declare
from outbox_relay.consumer.runner import Runner
from outbox_relay.logs import configure_logging
from outbox_relay.store.schema import migrate

DATABASE_URL = os.environ.get(
    "OUTBOX_RELAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
AMQP_URL = os.environ.get("OUTBOX_RELAY_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TARGET_RATIO = 0.7
BODY = json.dumps({"order": 1, "pad": "x" * 480}).encode()  # about 512 bytes


def commit_rate(schema: str, count: int) -> float:
    """Transactions a second on one connection, each inserting one inbox-shaped row."""
    with psycopg.connect(DATABASE_URL) as conn:
        table = sql.Identifier(schema, "bench_commits")
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (consumer text, message_id text, "
                "PRIMARY KEY (consumer, message_id))"
            ).format(table)
        )
        conn.commit()
        insert = sql.SQL("INSERT INTO {} (consumer, message_id) VALUES (%s, %s)").format(table)
        started = time.perf_counter()
        for n in range(count):
            conn.execute(insert, ("bench", str(n)))
            conn.commit()
        return count / (time.perf_counter() - started)


def fill(channel: Any, exchange: str, count: int) -> None:
    for _ in range(count):
        channel.basic_publish(
            exchange,
            "bench.created",
            BODY,
            properties=pika.BasicProperties(
                message_id=str(uuid.uuid4()), content_type="application/json", delivery_mode=2
            ),
        )


def consume_rate(schema: str, count: int, concurrency: int, *, with_db: bool) -> float:
    """Messages a second for a prefilled queue of ``count``, from consuming to the last one."""
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    exchange, queue = f"{prefix}.ex", f"{prefix}.q"
    app = ConsumerApp(
        name=prefix,
        schema=schema,
        database_url=DATABASE_URL,
        amqp_url=AMQP_URL,
        concurrency=concurrency,
    )
    done = threading.Event()
    handled = [0]
    lock = threading.Lock()

    def count_one() -> None:
        with lock:
            handled[0] += 1
            if handled[0] >= count:
                done.set()

    handler: Callable[..., None]
    if with_db:

        def handler(message: Message, tx: Any) -> None:
            pass

        app.after_commit(lambda _message: count_one())
    else:

        def handler(_message: Message) -> None:
            count_one()

    app.handler(exchange=exchange, queue=queue, retry_delays=[1])(handler)
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    runner = Runner(app, app.settings())
    thread = threading.Thread(target=runner.run, daemon=True)
    try:
        declare(AMQP_URL, app.handlers)  # the queues exist before the backlog is written
        fill(channel, exchange, count)
        thread.start()
        if not runner.ready.wait(15):
            raise RuntimeError("the consumer did not start")
        started = time.perf_counter()
        if not done.wait(300):
            raise RuntimeError(f"only {handled[0]} of {count} messages were handled")
        return count / (time.perf_counter() - started)
    finally:
        runner.stop()
        thread.join(30)
        for name in (queue, f"{queue}.retry.1s", f"{queue}.parking"):
            channel.queue_delete(name)
        channel.exchange_delete(exchange)
        conn.close()


def report(figure: str, runs: list[float], **extra: Any) -> float:
    median = statistics.median(runs)
    print(
        json.dumps(
            {
                "figure": figure,
                "median": round(median, 1),
                "runs": [round(r, 1) for r in runs],
                **extra,
            }
        ),
        flush=True,
    )
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    configure_logging(level="warning", fmt="json")  # per-message events would dominate
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    migrate(DATABASE_URL, schema=schema)
    try:
        baseline_runs, inbox_runs, nodb_runs = [], [], []
        for _ in range(args.runs):  # interleaved, so drift hits every figure alike
            baseline_runs.append(commit_rate_fresh(schema, args.messages))
            inbox_runs.append(consume_rate(schema, args.messages, args.concurrency, with_db=True))
            nodb_runs.append(consume_rate(schema, args.messages, args.concurrency, with_db=False))
        baseline = report("raw_single_connection_commits_per_s", baseline_runs, unit="tx/s")
        inbox = statistics.median(inbox_runs)
        report(
            "consumer_with_inbox_msgs_per_s",
            inbox_runs,
            unit="msg/s",
            concurrency=args.concurrency,
            baseline_commits_per_s=round(baseline, 1),
            ratio=round(inbox / baseline, 2),
            target_ratio=TARGET_RATIO,
            meets_target=inbox / baseline >= TARGET_RATIO,
        )
        report(
            "consumer_without_database_msgs_per_s",
            nodb_runs,
            unit="msg/s",
            concurrency=args.concurrency,
        )
    finally:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def commit_rate_fresh(schema: str, count: int) -> float:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, "bench_commits"))
        )
    return commit_rate(schema, count)


if __name__ == "__main__":
    main()
