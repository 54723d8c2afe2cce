"""Other Python outbox relays on the same PostgreSQL and RabbitMQ, in the same run as ours.

Each relay runs in a process of its own, configured as its documentation recommends,
with its own table in a schema of its own (dropped afterwards) and a queue of its own:

- ``outbox-relay``: ``outbox-relay run`` with its defaults.
- ``txoutbox`` (``pip install 'txoutbox[postgres]'``): ``PostgresStorage`` on an asyncpg
  pool with ``notify_channel`` and ``listen(relay.wake)`` (its "Not polling" section),
  ``Relay`` with the default ``RelayConfig``; its publisher is the one function it asks
  for, here aio-pika on a channel with publisher confirms (aio-pika's default), awaiting
  each confirm as txoutbox awaits each publish.
- ``faststream-outbox`` (``pip install 'faststream-outbox[asyncpg]'``): its relay
  quickstart (an ``OutboxBroker`` subscriber on an asyncpg engine, stacked under a
  FastStream ``RabbitBroker`` publisher) with the subscriber's defaults; LISTEN/NOTIFY
  comes with asyncpg. Both brokers log nothing (``logger=None``): FastStream logs each
  message it handles, and our relay runs at ``--log-level warning``, which logs none.

Figures per relay: throughput on a backlog of 512 B messages committed in one
transaction (from its commit until every message is in the queue), and commit-to-delivery
p50/p99 at a steady RATE_PER_S, one message per transaction, each written with the
relay's own producer API. A relay that is not installed is skipped with a line saying
how to install it. ``pip install '.[bench]'`` installs both.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import multiprocessing
import multiprocessing.synchronize
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

import outbox_relay
from benchmarks import latency
from benchmarks.common import (
    ROUTING_KEY,
    Env,
    Figure,
    Report,
    Route,
    broker_route,
    fill,
    median,
    outbox_schema,
    payload,
    percentile,
    purge,
    queue_depth,
    relay_process,
    unique,
    wait_listening,
)

SCENARIO = "peers"
RATE_PER_S = 100  # well below every peer's backlog rate here (faststream-outbox: 0.24-0.7k msg/s)
LATENCY_S = 10.0
BACKLOG = 5000
ROUNDS = 2
TIMEOUT_S = 120.0
OURS = "outbox-relay"
# The peers, and what installs each.
PEERS = {
    "txoutbox": ("txoutbox", "pip install 'txoutbox[postgres]'"),
    "faststream-outbox": ("faststream_outbox", "pip install 'faststream-outbox[asyncpg]'"),
}
OUTBOX_QUEUE = "bench"  # faststream-outbox's queue name (a column of its table)

# Writes messages in a transaction of its own and commits it.
Write = Callable[[list[bytes]], None]


def asyncpg_url(database_url: str) -> str:
    """The libpq URL in the form asyncpg and SQLAlchemy take (no query options)."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    user = info.get("user", "postgres")
    return (
        f"postgresql://{user}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/"
        f"{info.get('dbname', user)}"
    )


# -- the peers' relays, each in a child process ------------------------------------------


def run_peer(
    name: str,
    env: Env,
    schema: str,
    route: Route,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """In a child process: run ``name``'s relay until ``stop`` is set."""
    runner = _run_txoutbox if name == "txoutbox" else _run_faststream_outbox
    asyncio.run(runner(env, schema, route, ready, stop))


async def _until(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.05)


async def _run_txoutbox(
    env: Env,
    schema: str,
    route: Route,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    import aio_pika  # noqa: PLC0415 - optional (bench extra)
    import asyncpg  # noqa: PLC0415 - optional (bench extra)
    from txoutbox import OutboxMessage, Relay  # noqa: PLC0415 - optional (bench extra)
    from txoutbox.adapters.postgres import PostgresStorage  # noqa: PLC0415 - optional (bench extra)

    pool = await asyncpg.create_pool(asyncpg_url(env.database_url))
    storage = PostgresStorage(pool, schema=schema, notify_channel=schema)
    connection = await aio_pika.connect(env.amqp_url)
    channel = await connection.channel()  # publisher confirms: aio-pika's default
    exchange = await channel.get_exchange(route.exchange, ensure=False)

    async def publish(message: OutboxMessage) -> None:
        await exchange.publish(
            aio_pika.Message(
                message.payload,
                content_type="application/octet-stream",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(message.id),
            ),
            routing_key=message.topic,
        )

    relay = Relay(storage, publish)
    listener = await storage.listen(relay.wake)
    task = asyncio.create_task(relay.run())
    ready.set()
    await _until(stop)
    relay.stop()
    await task
    await listener.close()
    await connection.close()
    await pool.close()


def _faststream_table(schema: str) -> Any:
    from faststream_outbox import make_outbox_table  # noqa: PLC0415 - optional (bench extra)
    from sqlalchemy import MetaData  # noqa: PLC0415 - optional (bench extra)

    return make_outbox_table(MetaData(schema=schema), table_name="outbox")


async def _run_faststream_outbox(
    env: Env,
    schema: str,
    route: Route,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange  # noqa: PLC0415 - optional (bench extra)
    from faststream_outbox import OutboxBroker  # noqa: PLC0415 - optional (bench extra)
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415 - optional (bench extra)

    engine = create_async_engine(asyncpg_url(env.database_url).replace("://", "+asyncpg://", 1))
    outbox = OutboxBroker(engine, outbox_table=_faststream_table(schema), logger=None)
    rabbit = RabbitBroker(env.amqp_url, logger=None)
    exchange = RabbitExchange(route.exchange, type=ExchangeType.TOPIC, durable=True)

    @rabbit.publisher(ROUTING_KEY, exchange=exchange)  # type: ignore[misc]
    @outbox.subscriber(OUTBOX_QUEUE)  # type: ignore[misc]
    async def relay(body: bytes) -> bytes:
        return body

    await rabbit.connect()
    await rabbit.start()
    await outbox.start()
    ready.set()
    await _until(stop)
    await outbox.stop()
    await rabbit.stop()
    await engine.dispose()


# -- tables, producers and the relays' lifetimes -----------------------------------------


class AsyncWriter:
    """A peer's producer API on an event loop of its own, called from one thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.loop.close()


@contextlib.contextmanager
def peer_schema(env: Env, name: str) -> Iterator[str]:
    """A schema holding the peer's own table, made with its own DDL; dropped afterwards."""
    schema = unique("bench_peer")
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        writer = AsyncWriter()
        try:
            writer.run(_create_table(env, name, schema))
        finally:
            writer.close()
        yield schema
    finally:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def _create_table(env: Env, name: str, schema: str) -> None:
    if name == "txoutbox":
        import asyncpg  # noqa: PLC0415 - optional (bench extra)
        from txoutbox.adapters.postgres import PostgresStorage  # noqa: PLC0415 - optional (bench extra)

        conn = await asyncpg.connect(asyncpg_url(env.database_url))
        try:
            storage = PostgresStorage(None, schema=schema, notify_channel=schema)  # type: ignore[arg-type]
            await conn.execute(storage.schema_sql())
        finally:
            await conn.close()
        return
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415 - optional (bench extra)

    engine = create_async_engine(asyncpg_url(env.database_url).replace("://", "+asyncpg://", 1))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_faststream_table(schema).metadata.create_all)
    finally:
        await engine.dispose()


@contextlib.contextmanager
def relay_running(env: Env, name: str, schema: str, route: Route) -> Iterator[None]:
    """``name``'s relay, started and ready, stopped at the end."""
    if name == OURS:
        with relay_process(env, schema):
            wait_listening(env.database_url, schema)
            yield
        return
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    child = context.Process(
        target=run_peer, args=(name, env, schema, route, ready, stop), daemon=True
    )
    child.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{name}'s relay did not start within 60 s")
        yield
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.terminate()
            child.join(5)


@contextlib.contextmanager
def producer(env: Env, name: str, schema: str, route: Route) -> Iterator[Write]:
    """``name``'s producer API: the messages written in one transaction, committed."""
    if name == OURS:
        with psycopg.connect(env.database_url) as conn:

            def write_ours(messages: list[bytes]) -> None:
                if len(messages) == 1:
                    outbox_relay.publish(
                        conn,
                        exchange=route.exchange,
                        routing_key=ROUTING_KEY,
                        payload=messages[0],
                        content_type="application/octet-stream",
                        schema=schema,
                    )
                else:
                    fill(conn, schema, route.exchange, len(messages), size=len(messages[0]))
                conn.commit()

            yield write_ours
        return
    writer = AsyncWriter()
    try:
        if name == "txoutbox":
            with _txoutbox_producer(env, schema, writer) as write:
                yield write
        else:
            with _faststream_producer(env, schema, writer) as write:
                yield write
    finally:
        writer.close()


@contextlib.contextmanager
def _txoutbox_producer(env: Env, schema: str, writer: AsyncWriter) -> Iterator[Write]:
    import asyncpg  # noqa: PLC0415 - optional (bench extra)
    from txoutbox.adapters.postgres import PostgresStorage  # noqa: PLC0415 - optional (bench extra)

    conn = writer.run(asyncpg.connect(asyncpg_url(env.database_url)))
    storage = PostgresStorage(None, schema=schema, notify_channel=schema)  # type: ignore[arg-type]

    async def insert(messages: list[bytes]) -> None:
        async with conn.transaction():
            for message in messages:
                await storage.insert(conn, ROUTING_KEY, message)

    try:
        yield lambda messages: writer.run(insert(messages))
    finally:
        writer.run(conn.close())


@contextlib.contextmanager
def _faststream_producer(env: Env, schema: str, writer: AsyncWriter) -> Iterator[Write]:
    from faststream_outbox import OutboxBroker  # noqa: PLC0415 - optional (bench extra)
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: PLC0415 - optional (bench extra)

    engine = create_async_engine(asyncpg_url(env.database_url).replace("://", "+asyncpg://", 1))
    broker = OutboxBroker(engine, outbox_table=_faststream_table(schema), logger=None)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def insert(messages: list[bytes]) -> None:
        async with sessions() as session, session.begin():
            if len(messages) == 1:
                await broker.publish(messages[0], queue=OUTBOX_QUEUE, session=session)
            else:
                await broker.publish_batch(*messages, queue=OUTBOX_QUEUE, session=session)

    try:
        writer.run(broker.connect())
        yield lambda messages: writer.run(insert(messages))
    finally:
        writer.run(engine.dispose())


# -- measurements --------------------------------------------------------------------------


def wait_depth(env: Env, queue: str, count: int, *, timeout_s: float) -> tuple[float, int]:
    """Poll the queue until it holds ``count``; the monotonic time then (or at the
    timeout) and the depth seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        depth = queue_depth(env.amqp_url, queue)
        if depth >= count or time.monotonic() > deadline:
            return time.monotonic(), depth
        time.sleep(0.02)


def ready_probe(env: Env, write: Write, route: Route) -> None:
    """One message through the relay, so the figures start from a relay at work."""
    write([payload()])
    _, depth = wait_depth(env, route.queue, 1, timeout_s=30)
    if depth < 1:
        raise RuntimeError("the probe message never reached the queue")
    purge(env.amqp_url, route.queue)


def throughput(env: Env, name: str, count: int) -> tuple[float, int]:
    """Messages per second from the backlog's commit until all are in the queue, and
    how many arrived (fewer at the timeout)."""
    with (
        _schema(env, name) as schema,
        broker_route(env.amqp_url) as route,
        producer(env, name, schema, route) as write,
        relay_running(env, name, schema, route),
    ):
        ready_probe(env, write, route)
        messages = [payload(seq=i) for i in range(count)]
        write(messages)
        committed = time.monotonic()
        done, depth = wait_depth(env, route.queue, count, timeout_s=TIMEOUT_S)
    return min(depth, count) / (done - committed), depth


def commit_to_delivery(env: Env, name: str, duration_s: float) -> list[float]:
    """Commit-to-delivery times (ms) at RATE_PER_S, one message per transaction."""
    count = int(RATE_PER_S * duration_s)
    context = multiprocessing.get_context("spawn")
    with (
        _schema(env, name) as schema,
        broker_route(env.amqp_url) as route,
        producer(env, name, schema, route) as write,
        relay_running(env, name, schema, route),
    ):
        ready_probe(env, write, route)
        ready, results = context.Event(), context.Queue()
        consumer = context.Process(
            target=latency.consume,
            args=(env.amqp_url, route.queue, count, ready, results),
            daemon=True,
        )
        consumer.start()
        try:
            ready.wait(20)
            committed = _steady(write, count)
            arrivals: dict[int, float] = results.get(timeout=latency.DEADLINE_S)
            consumer.join(10)
        finally:
            if consumer.is_alive():
                consumer.terminate()
                consumer.join(5)
    found = [(arrivals[i] - committed[i]) * 1000 for i in committed if i in arrivals]
    if len(found) < 0.99 * count:
        raise AssertionError(f"{name}: only {len(found)} of {count} messages arrived")
    return found


def _steady(write: Write, count: int) -> dict[int, float]:
    """One message per transaction at RATE_PER_S from this thread; commit times."""
    committed: dict[int, float] = {}
    body = payload()
    digits = latency.SEQ_DIGITS
    started = time.monotonic()
    for i in range(count):
        delay = started + i / RATE_PER_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        write([f"{i:0{digits}d}".encode() + body[digits:]])
        committed[i] = time.monotonic()
    return committed


@contextlib.contextmanager
def _schema(env: Env, name: str) -> Iterator[str]:
    if name == OURS:
        with outbox_schema(env.database_url) as schema:
            yield schema
    else:
        with peer_schema(env, name) as schema:
            yield schema


@dataclass
class Measured:
    rates: list[float]
    latencies_ms: list[float]
    short: int = 0  # messages missing at the throughput timeout


def installed() -> tuple[list[str], dict[str, str]]:
    """The peers that can run here, and why the others cannot."""
    present, missing = [], {}
    for name, (module, install) in PEERS.items():
        needs = [module, "asyncpg"] + (["aio_pika"] if name == "txoutbox" else [])
        absent = [m for m in needs if importlib.util.find_spec(m) is None]
        if absent:
            missing[name] = f"{', '.join(absent)} not installed: {install}"
        else:
            present.append(name)
    return present, missing


def run(env: Env, report: Report) -> None:
    """Every relay's throughput and latency, in rounds; medians of the rounds, and each
    peer's figures over ours from the same run."""
    peers, missing = installed()
    for name, why in missing.items():
        print(f"peers: skipping {name}: {why}", flush=True)
    rounds = 1 if env.quick else ROUNDS
    backlog = env.size(BACKLOG, 500)
    duration_s = 2.0 if env.quick else LATENCY_S / ROUNDS
    names = [OURS, *peers]
    measured = {name: Measured([], []) for name in names}
    for n in range(rounds):
        for name in names if n % 2 == 0 else reversed(names):
            rate, depth = throughput(env, name, backlog)
            measured[name].rates.append(rate)
            measured[name].short += max(0, backlog - depth)
            measured[name].latencies_ms += commit_to_delivery(env, name, duration_s)
    ours = measured[OURS]
    for name in names:
        got = measured[name]
        rate = median(got.rates)
        extra = {"rounds": rounds, "rate_per_round": [round(r) for r in got.rates]}
        if got.short:
            extra["missing_at_timeout"] = got.short
        report.add(
            Figure(
                SCENARIO,
                f"{name}: throughput, {backlog} messages of 512 B"
                + (" (timed out)" if got.short else ""),
                round(rate),
                "msg/s",
                baseline=None if name == OURS else round(median(ours.rates)),
                extra=extra,
            )
        )
        for key in ("p50", "p99"):
            value = percentile(got.latencies_ms, float(key[1:]))
            report.add(
                Figure(
                    SCENARIO,
                    f"{name}: commit to delivery {key} at {RATE_PER_S} msg/s",
                    round(value, 2),
                    "ms",
                    baseline=None
                    if name == OURS
                    else round(percentile(ours.latencies_ms, float(key[1:])), 2),
                    extra={"messages": len(got.latencies_ms)},
                )
            )
        if name != OURS:
            report.add(
                Figure(
                    SCENARIO,
                    f"{name} / outbox-relay: throughput",
                    # The median of the rounds' own ratios: the machine drifts between rounds.
                    round(median([a / b for a, b in zip(got.rates, ours.rates, strict=True)]), 3),
                    "x",
                    extra={
                        "per_round": [
                            round(a / b, 3) for a, b in zip(got.rates, ours.rates, strict=True)
                        ]
                    },
                )
            )
            report.add(
                Figure(
                    SCENARIO,
                    f"{name} / outbox-relay: commit to delivery p50",
                    round(percentile(got.latencies_ms, 50) / percentile(ours.latencies_ms, 50), 2),
                    "x",
                )
            )
    for name, why in missing.items():
        report.add(Figure(SCENARIO, f"{name}: skipped ({why})", 0, ""))
