"""Consumer throughput with the inbox, beside the raw single-connection commit rate
measured in the same run, and without a database. Part of ``python -m benchmarks all``;
alone, with its own sizes::

    python -m benchmarks.consumer [--messages N] [--runs R] [--concurrency C]

Every run uses its own schema, exchange and queues and removes them at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import psycopg
from psycopg import sql

from benchmarks.common import Env, Figure, Report, outbox_schema, ratio_target, unique
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.declare import declare
from outbox_relay.consumer.runner import Runner
from outbox_relay.logs import configure_logging

SCENARIO = "consumer"
TARGET_RATIO = 0.7
CONCURRENCY = 4
BODY = json.dumps({"order": 1, "pad": "x" * 480}).encode()  # about 512 bytes


def commit_rate(database_url: str, schema: str, count: int) -> float:
    """Transactions a second on one connection, each inserting one inbox-shaped row."""
    table = sql.Identifier(schema, "bench_commits")
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
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


def consume_rate(env: Env, schema: str, count: int, concurrency: int, *, with_db: bool) -> float:
    """Messages a second for a prefilled queue of ``count``, from consuming to the last one."""
    prefix = unique("bench")
    exchange, queue = f"{prefix}.ex", f"{prefix}.q"
    app = ConsumerApp(
        name=prefix,
        schema=schema,
        database_url=env.database_url,
        amqp_url=env.amqp_url,
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
    conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    channel = conn.channel()
    runner = Runner(app, app.settings())
    thread = threading.Thread(target=runner.run, daemon=True)
    try:
        declare(env.amqp_url, app.handlers)  # the queues exist before the backlog is written
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


def run(
    env: Env,
    report: Report,
    *,
    messages: int | None = None,
    runs: int | None = None,
    concurrency: int = CONCURRENCY,
) -> None:
    messages = messages or env.size(10_000, 1_000)
    runs = runs or (1 if env.quick else 3)
    commits: list[float] = []
    inbox: list[float] = []
    no_db: list[float] = []
    with outbox_schema(env.database_url) as schema:
        for _ in range(runs):  # interleaved, so drift hits every figure alike
            commits.append(commit_rate(env.database_url, schema, messages))
            inbox.append(consume_rate(env, schema, messages, concurrency, with_db=True))
            no_db.append(consume_rate(env, schema, messages, concurrency, with_db=False))
    baseline = statistics.median(commits)
    report.add(
        Figure(
            SCENARIO,
            "raw single-connection commits",
            round(baseline),
            "tx/s",
            extra={"samples": commits},
        )
    )
    report.add(
        Figure(
            SCENARIO,
            f"with inbox, concurrency {concurrency}, {messages} messages of 512 B",
            round(statistics.median(inbox)),
            "msg/s",
            baseline=round(baseline),
            extra={"samples": inbox},
        )
    )
    # The median of each run's own ratio: runs are interleaved, the machine drifts.
    ratios = [round(i / c, 3) for i, c in zip(inbox, commits, strict=True)]
    report.add(
        ratio_target(
            SCENARIO,
            "with inbox / raw commits",
            statistics.median(ratios),
            at_least=TARGET_RATIO,
            against="raw commit rate",
            extra={"run_ratios": ratios},
        )
    )
    report.add(
        Figure(
            SCENARIO,
            f"without a database, concurrency {concurrency}",
            round(statistics.median(no_db)),
            "msg/s",
            extra={"samples": no_db},
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args()
    configure_logging(level="warning", fmt="json")  # per-message events would dominate
    report = Report()
    run(
        Env.from_environment(quick=False),
        report,
        messages=args.messages,
        runs=args.runs,
        concurrency=args.concurrency,
    )
    print()
    print(report.table())


if __name__ == "__main__":
    main()
