"""How close any relay that tails the table could come to the dual write: the floor of the
extra hop, measured beside the dual write and the relay in the same run.

``python -m benchmarks.floor [--rounds 3 --seconds 5]`` (not part of ``all``) runs, in
alternating rounds at the latency scenario's load (1k msg/s, one message per transaction,
the same producers, broker queue and consumer; see :mod:`benchmarks.latency`):

- **dual write**: commit a plain row, then publish from the application (the ceiling);
- **notify, publish**: the transaction also sends the whole message in a NOTIFY; a
  process listening publishes each notification as it arrives, with no database round
  trip and no confirm awaited: what a relay could reach if it published from the
  notification alone;
- **notify, read, publish**: the NOTIFY carries the row's id; the listener reads the row
  by its primary key (one short round trip, as a relay must to lock or check it), then
  publishes;
- **relay**: ``publish()`` and ``outbox-relay run``, as in the latency scenario.

Each side's p50 and p99 are printed with their ratio to the dual write's. Neither floor
keeps order per key, fences a partition, waits for confirms or deletes a row: they bound
from below what those cost, they are not designs.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.synchronize
from collections.abc import Iterator
from typing import Any

import pika
import psycopg

from benchmarks import latency
from benchmarks.common import ROUTING_KEY, Env, Route, query

CHANNEL = "bench_floor"


def listen_and_publish(
    database_url: str,
    amqp_url: str,
    route: Route,
    schema: str,
    read_row: bool,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """In a child process: publish each notification's message (or the row it names)."""
    amqp = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = amqp.channel()
    properties = pika.BasicProperties(
        content_type="application/octet-stream", delivery_mode=pika.DeliveryMode.Persistent
    )
    select = query("floor_row", schema)
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        psycopg.connect(database_url, autocommit=True) as reader,
    ):
        conn.execute(f"LISTEN {CHANNEL}")
        ready.set()
        while not stop.is_set():
            for notice in conn.notifies(timeout=0.2):
                if read_row:
                    row = reader.execute(select, {"id": int(notice.payload)}).fetchone()
                    body = bytes(row[0]) if row else b""
                else:
                    body = bytes.fromhex(notice.payload)
                channel.basic_publish(route.exchange, ROUTING_KEY, body, properties)
    amqp.close()


def listener(read_row: bool) -> latency.Setting:
    @contextlib.contextmanager
    def beside(env: Env, schema: str, route: Route) -> Iterator[None]:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            conn.execute(query("plain_table", schema))
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        process = context.Process(
            target=listen_and_publish,
            args=(env.database_url, env.amqp_url, route, schema, read_row, ready, stop),
            daemon=True,
        )
        process.start()
        try:
            if not ready.wait(30):
                raise TimeoutError("the floor's listener did not start")
            yield
        finally:
            stop.set()
            process.join(5)
            if process.is_alive():
                process.terminate()

    return beside


def notifying_producer(read_row: bool) -> latency.Producer:
    @contextlib.contextmanager
    def producer(
        _env: Env, schema: str, _route: Route
    ) -> Iterator[tuple[latency.Write, latency.AfterCommit]]:
        insert = query("floor_insert", schema)

        def write(conn: psycopg.Connection[Any], message: bytes) -> None:
            (row_id,) = conn.execute(insert, {"payload": message}).fetchone() or (0,)
            notice = str(row_id) if read_row else message.hex()
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice))
            conn.commit()

        yield write, lambda _message: None

    return producer


SIDES: dict[str, tuple[latency.Setting, latency.Producer]] = {
    "dual write": (latency.plain_table, latency.direct_producer),
    "notify, publish": (listener(False), notifying_producer(False)),
    "notify, read, publish": (listener(True), notifying_producer(True)),
    "relay": (latency.the_relay, latency.outbox_producer),
}


def measure_sides(env: Env, *, rounds: int, seconds: float) -> dict[str, latency.Latencies]:
    """Every side's latencies, pooled over ``rounds`` alternating rounds."""
    pooled = {name: latency.Latencies() for name in SIDES}
    names = list(SIDES)
    for n in range(rounds):
        # Each side goes first in turn: none always meets the machine another just left.
        for name in names[n % len(names) :] + names[: n % len(names)]:
            beside, producer = SIDES[name]
            pooled[name].add(latency.measure(env, beside, duration_s=seconds, producer=producer))
    return pooled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="of each side per round")
    args = parser.parse_args(argv)
    pooled = measure_sides(
        Env.from_environment(quick=False), rounds=args.rounds, seconds=args.seconds
    )
    dual = pooled["dual write"]
    print(f"{'side':<24}{'p50 ms':>9}{'p99 ms':>9}{'p50 / dual':>12}{'p99 / dual':>12}")
    for name, lat in pooled.items():
        p50, p99 = lat.figure("p50"), lat.figure("p99")
        print(
            f"{name:<24}{p50:>9.2f}{p99:>9.2f}"
            f"{p50 / dual.figure('p50'):>12.2f}{p99 / dual.figure('p99'):>12.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
