"""Consumer throughput: handlers that insert one row per message, the SDK with its inbox
beside a FastStream subscriber doing the same insert without one, and the raw
single-connection commit rate, all in the same run. Part of ``python -m benchmarks all``;
alone, with its own sizes::

    python -m benchmarks.consumer [--messages N] [--runs R]

Each case drains a backlog of ``N`` messages prefilled in a queue of its own; the cases
alternate within each round and ratios are taken within a round (median over rounds):

- raw: one connection, ``INSERT`` + ``COMMIT`` per message, no broker (the ceiling);
- SDK, concurrency 1 and 4: ``def handler(message, tx)``, the row inserted through ``tx``
  after the SDK's inbox row, one transaction per message, acked after the commit;
- SDK async, concurrency 4: the same handler as ``async def`` on psycopg's
  ``AsyncConnection`` (each worker thread runs it on its event loop);
- FastStream: an ``async def`` subscriber inserting the row on one psycopg
  ``AsyncConnection`` in autocommit (one round trip, one transaction per message), acked
  after the handler returns; no inbox, no dedupe. aiormq runs each delivery as a task, so
  up to the prefetch (10) handlers overlap their broker work; their inserts take turns on
  the one connection.

Per-message logging is off for both (the SDK at warning, FastStream with ``logger=None``).
Every run uses its own schema, exchange and queues and removes them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika
import psycopg
from psycopg import sql

from benchmarks.common import Env, Figure, Report, Rounds, outbox_schema, ratio_target, unique
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.declare import declare
from outbox_relay.consumer.runner import Runner
from outbox_relay.logs import configure_logging

SCENARIO = "consumer"
RAW_TARGET_RATIO = 0.7  # the SDK at its default concurrency against the raw commit rate
FASTSTREAM_TARGET_RATIO = 1.0
FASTSTREAM_PREFETCH = 10
BODY_PAD = "x" * 480  # about 512 bytes a message
RAW, SDK_1, SDK_4, FASTSTREAM = "raw commits", "SDK c1", "SDK c4", "FastStream"
SDK_ASYNC_4 = "SDK async c4"
CASES = (RAW, SDK_1, FASTSTREAM, SDK_4, SDK_ASYNC_4)
DRAIN_TIMEOUT_S = 300.0


def body(n: int) -> bytes:
    return json.dumps({"order": n, "pad": BODY_PAD}).encode()


class Effects:
    """A fresh table for one case's rows, and the INSERT its handler runs per message."""

    def __init__(self, database_url: str, schema: str) -> None:
        self._url = database_url
        self._table = sql.Identifier(schema, unique("effects"))
        self.insert = sql.SQL("INSERT INTO {} (message_id, order_no) VALUES (%s, %s)").format(
            self._table
        )

    def _execute(self, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self._url, autocommit=True) as conn:
            cursor = conn.execute(sql.SQL(statement).format(self._table))
            return cursor.fetchall() if cursor.description else []

    def create(self) -> None:
        self._execute(
            "CREATE TABLE {} (id bigserial PRIMARY KEY, message_id text NOT NULL, "
            "order_no bigint NOT NULL)"
        )

    def drop(self) -> None:
        self._execute("DROP TABLE {}")

    def check(self, count: int) -> None:
        """Every message left its one row: a case that skipped the work measured nothing."""
        rows = self._execute("SELECT count(*) FROM {}")[0][0]
        if rows != count:
            raise RuntimeError(f"{rows} rows written for {count} messages")


@contextmanager
def effects_table(database_url: str, schema: str) -> Iterator[Effects]:
    effects = Effects(database_url, schema)
    effects.create()
    try:
        yield effects
    finally:
        effects.drop()


def commit_rate(database_url: str, insert: sql.Composed, count: int) -> float:
    """Transactions a second on one connection, each inserting one row."""
    with psycopg.connect(database_url) as conn:
        started = time.perf_counter()
        for n in range(count):
            conn.execute(insert, (str(uuid.uuid4()), n))
            conn.commit()
        return count / (time.perf_counter() - started)


def names() -> tuple[str, str]:
    """A case's own exchange and queue."""
    prefix = unique("bench")
    return f"{prefix}.ex", f"{prefix}.q"


@contextmanager
def backlog(
    env: Env, exchange: str, queue: str, count: int, *, declare_queue: Callable[[], None]
) -> Iterator[None]:
    """The exchange, the queue (``declare_queue`` declares and binds it) and ``count``
    messages in it, confirmed; the exchange and the queue with its retry tier and parking
    lot are deleted after."""
    conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    channel = conn.channel()
    try:
        channel.exchange_declare(exchange, "topic", durable=True)
        declare_queue()
        channel.confirm_delivery()
        for n in range(count):
            channel.basic_publish(
                exchange,
                "bench.created",
                body(n),
                properties=pika.BasicProperties(
                    message_id=str(uuid.uuid4()), content_type="application/json", delivery_mode=2
                ),
            )
        yield
    finally:
        for name in (queue, f"{queue}.retry.1s", f"{queue}.parking"):
            channel.queue_delete(name)
        channel.exchange_delete(exchange)
        conn.close()


class Countdown:
    """Set once ``count`` messages were handled (from any thread)."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()
        self.done = threading.Event()

    def one(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self.done.set()

    def wait(self) -> None:
        if not self.done.wait(DRAIN_TIMEOUT_S):
            raise RuntimeError(f"{self._left} messages were not handled in time")


def sdk_rate(
    env: Env,
    schema: str,
    insert: sql.Composed,
    count: int,
    *,
    concurrency: int,
    asynchronous: bool = False,
) -> float:
    """Messages a second for the SDK draining a backlog of ``count``, from consuming to the
    last commit; ``asynchronous``: the handler is an ``async def``."""
    exchange, queue = names()
    app = ConsumerApp(
        name=unique("bench"),
        schema=schema,
        database_url=env.database_url,
        amqp_url=env.amqp_url,
        concurrency=concurrency,
    )
    countdown = Countdown(count)

    def handler(message: Message, tx: psycopg.Connection[Any]) -> None:
        tx.execute(insert, (message.message_id, message.body["order"]))

    async def async_handler(message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
        await tx.execute(insert, (message.message_id, message.body["order"]))

    register = app.handler(exchange=exchange, queue=queue, retry_delays=[1], declare_exchange=False)
    register(async_handler if asynchronous else handler)
    app.after_commit(lambda _message: countdown.one())
    with backlog(
        env, exchange, queue, count, declare_queue=lambda: declare(env.amqp_url, app.handlers)
    ):
        return timed_drain(Runner(app, app.settings()), countdown, count)


def timed_drain(runner: Runner, countdown: Countdown, count: int) -> float:
    """Messages per second from the runner's start until ``countdown`` reached zero."""
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        if not runner.ready.wait(15):
            raise RuntimeError("the consumer did not start")
        started = time.perf_counter()
        countdown.wait()
        return count / (time.perf_counter() - started)
    finally:
        runner.stop()
        thread.join(30)


def faststream_rate(env: Env, insert: sql.Composed, count: int) -> float:
    """Messages a second for a FastStream subscriber draining a backlog of ``count``."""
    from faststream.rabbit import (  # noqa: PLC0415 - a dev extra, imported when measured
        Channel,
        RabbitBroker,
        RabbitMessage,
        RabbitQueue,
    )

    async def drain(queue: str) -> float:
        async with await psycopg.AsyncConnection.connect(env.database_url, autocommit=True) as conn:
            broker = RabbitBroker(
                env.amqp_url,
                logger=None,
                default_channel=Channel(prefetch_count=FASTSTREAM_PREFETCH),
            )
            handled = [0]
            done = asyncio.Event()

            @broker.subscriber(RabbitQueue(queue, declare=False))
            async def handle(order: dict[str, Any], message: RabbitMessage) -> None:
                await conn.execute(insert, (message.message_id, order["order"]))
                handled[0] += 1
                if handled[0] >= count:
                    done.set()

            await broker.start()
            try:
                started = time.perf_counter()
                await asyncio.wait_for(done.wait(), DRAIN_TIMEOUT_S)
                return count / (time.perf_counter() - started)
            finally:
                await broker.stop()

    exchange, queue = names()

    def declare_queue() -> None:
        with pika.BlockingConnection(pika.URLParameters(env.amqp_url)) as conn:
            channel = conn.channel()
            channel.queue_declare(queue, durable=True)
            channel.queue_bind(queue, exchange, "#")

    with backlog(env, exchange, queue, count, declare_queue=declare_queue):
        return asyncio.run(drain(queue))


def run(env: Env, report: Report, *, messages: int | None = None, runs: int | None = None) -> None:
    messages = messages or env.size(10_000, 300)
    runs = runs or (1 if env.quick else 3)
    measured = Rounds()
    with outbox_schema(env.database_url) as schema:
        cases: dict[str, Callable[[sql.Composed], float]] = {
            RAW: lambda insert: commit_rate(env.database_url, insert, messages),
            SDK_1: lambda insert: sdk_rate(env, schema, insert, messages, concurrency=1),
            FASTSTREAM: lambda insert: faststream_rate(env, insert, messages),
            SDK_4: lambda insert: sdk_rate(env, schema, insert, messages, concurrency=4),
            SDK_ASYNC_4: lambda insert: sdk_rate(
                env, schema, insert, messages, concurrency=4, asynchronous=True
            ),
        }
        for round_no in range(runs):
            # Interleaved, the order turned each round: drift hits every case alike.
            measured.round = round_no
            turn = round_no % len(CASES)
            for case in CASES[turn:] + CASES[:turn]:
                with effects_table(env.database_url, schema) as effects:
                    measured.add(case, cases[case](effects.insert))
                    effects.check(messages)
    report_figures(report, measured, messages)


def report_figures(report: Report, measured: Rounds, messages: int) -> None:
    def rate(case: str, name: str) -> None:
        samples = [round(r) for r in measured.rates[case]]
        value = round(statistics.median(samples))
        report.add(Figure(SCENARIO, name, value, "msg/s", extra={"samples": samples}))

    rate(RAW, "raw single-connection commits, one INSERT each")
    rate(SDK_1, f"SDK with inbox, concurrency 1, {messages} messages of 512 B")
    rate(SDK_4, "SDK with inbox, concurrency 4")
    rate(SDK_ASYNC_4, "SDK with inbox, async handlers, concurrency 4")
    rate(FASTSTREAM, "FastStream subscriber without inbox, one connection")
    for case, against, target, name in (
        (SDK_1, FASTSTREAM, FASTSTREAM_TARGET_RATIO, "SDK c1 with inbox / FastStream"),
        (SDK_4, FASTSTREAM, FASTSTREAM_TARGET_RATIO, "SDK c4 with inbox / FastStream"),
        (SDK_ASYNC_4, FASTSTREAM, FASTSTREAM_TARGET_RATIO, "SDK async c4 with inbox / FastStream"),
        (SDK_ASYNC_4, SDK_4, None, "SDK async c4 / SDK c4"),
        (SDK_4, RAW, RAW_TARGET_RATIO, "SDK c4 with inbox / raw commits"),
        (SDK_1, RAW, None, "SDK c1 with inbox / raw commits"),
        (FASTSTREAM, RAW, None, "FastStream / raw commits"),
    ):
        ratios = measured.ratios(case, against)
        if target is None:
            ratio = round(measured.ratio(case, against), 3)
            figure = Figure(SCENARIO, name, ratio, "x", extra={"run_ratios": ratios})
        else:
            figure = ratio_target(
                SCENARIO,
                name,
                measured.ratio(case, against),
                at_least=target,
                against=against,
                extra={"run_ratios": ratios},
            )
        report.add(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    configure_logging(level="warning", fmt="json")  # per-message events would dominate
    report = Report()
    run(Env.from_environment(quick=False), report, messages=args.messages, runs=args.runs)
    print()
    print(report.table())


if __name__ == "__main__":
    main()
