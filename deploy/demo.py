"""The demo behind `make demo`: orders written with outbox messages, relayed, consumed.

It migrates a demo schema, declares a demo exchange and queue, starts `outbox-relay run`
as a separate process, writes orders one transaction each (every tenth rolled back), and
consumes what arrives. It prints how many were published, that none of the rolled-back
orders was, and the commit-to-delivery latency. It removes everything it created.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pika
import pika.exceptions
import psycopg
from psycopg import sql

import outbox_relay
from outbox_relay.store.schema import migrate
from outbox_relay.urls import redact_url, scrub

DATABASE_URL = os.environ.get(
    "OUTBOX_RELAY_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("OUTBOX_RELAY_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
SCHEMA = "outbox_demo"
EXCHANGE = "outbox_demo.orders"
QUEUE = "outbox_demo.billing"
ORDERS = 300
ORDERS_PER_SECOND = 200
COMPOSE_UP = "`docker compose -f deploy/docker-compose.yml up -d postgres rabbitmq`"


def first_line(exc: BaseException, url: str) -> str:
    """The error's first line, without the password of ``url`` (drivers may quote it)."""
    return scrub((str(exc).strip().splitlines() or [type(exc).__name__])[0], url)


def check_services() -> None:
    problems = []
    try:
        psycopg.connect(DATABASE_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        problems.append(
            f"PostgreSQL is not reachable at {redact_url(DATABASE_URL)} "
            f"({first_line(exc, DATABASE_URL)}).\n"
            "  Start it: pg_ctlcluster --skip-systemctl-redirect 15 main start "
            "(Debian: apt-get install postgresql),\n"
            f"  or, where Docker runs, {COMPOSE_UP},\n"
            "  or point OUTBOX_RELAY_DATABASE_URL at yours."
        )
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except pika.exceptions.AMQPError as exc:
        problems.append(
            f"RabbitMQ is not reachable at {redact_url(AMQP_URL)} "
            f"({scrub(repr(exc), AMQP_URL)}).\n"
            "  Start it: rabbitmq-server -detached (Debian: apt-get install rabbitmq-server),\n"
            f"  or, where Docker runs, {COMPOSE_UP},\n"
            "  or point OUTBOX_RELAY_AMQP_URL at yours."
        )
    if problems:
        print(
            "The demo needs PostgreSQL and RabbitMQ.\n\n" + "\n\n".join(problems), file=sys.stderr
        )
        sys.exit(1)


def prepare() -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    migrate(DATABASE_URL, schema=SCHEMA)
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.orders (id uuid PRIMARY KEY, total numeric NOT NULL)").format(
                sql.Identifier(SCHEMA)
            )
        )
    channel = pika.BlockingConnection(pika.URLParameters(AMQP_URL)).channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True)
    channel.queue_declare(QUEUE, durable=True)
    channel.queue_bind(QUEUE, EXCHANGE, "order.*")
    channel.queue_purge(QUEUE)
    channel.connection.close()


def cleanup() -> None:
    channel = pika.BlockingConnection(pika.URLParameters(AMQP_URL)).channel()
    channel.queue_delete(QUEUE)
    channel.exchange_delete(EXCHANGE)
    channel.connection.close()
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


class Consumer(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.arrived: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        channel = pika.BlockingConnection(pika.URLParameters(AMQP_URL)).channel()
        for method, properties, _body in channel.consume(
            QUEUE, auto_ack=True, inactivity_timeout=0.1
        ):
            if method is not None:
                self.arrived[properties.message_id] = time.perf_counter()
            if self.stop.is_set():
                break
        channel.cancel()
        channel.connection.close()


def main() -> None:
    check_services()
    prepare()
    env = {
        **os.environ,
        "OUTBOX_RELAY_DATABASE_URL": DATABASE_URL,
        "OUTBOX_RELAY_AMQP_URL": AMQP_URL,
        "OUTBOX_RELAY_SCHEMA": SCHEMA,
        "OUTBOX_RELAY_LOG_LEVEL": "warning",
    }
    relay = subprocess.Popen([sys.executable, "-m", "outbox_relay", "run"], env=env)
    consumer = Consumer()
    consumer.start()
    committed: dict[str, float] = {}
    rolled_back: set[str] = set()
    try:
        time.sleep(1.0)  # let the relay connect and fall asleep on LISTEN
        print(f"writing {ORDERS} orders, one transaction each, every tenth rolled back ...")
        insert_order = sql.SQL("INSERT INTO {}.orders (id, total) VALUES (%s, %s)").format(
            sql.Identifier(SCHEMA)
        )
        with psycopg.connect(DATABASE_URL) as conn:
            for n in range(ORDERS):
                order_id = uuid.uuid4()
                conn.execute(insert_order, (order_id, 10 + n))
                message_id = outbox_relay.publish(
                    conn,
                    exchange=EXCHANGE,
                    routing_key="order.created",
                    payload={"order_id": str(order_id), "total": 10 + n},
                    partition_key=str(order_id),
                    schema=SCHEMA,
                )
                if n % 10 == 9:
                    conn.rollback()
                    rolled_back.add(str(message_id))
                else:
                    conn.commit()
                    committed[str(message_id)] = time.perf_counter()
                time.sleep(1 / ORDERS_PER_SECOND)
        deadline = time.monotonic() + 10
        while len(consumer.arrived) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything that should not arrive has had its chance
    finally:
        consumer.stop.set()
        consumer.join(5)
        relay.send_signal(signal.SIGTERM)
        relay_exit = relay.wait(15)
    arrived = consumer.arrived
    latencies_ms = sorted((arrived[m] - committed[m]) * 1000 for m in committed if m in arrived)
    with psycopg.connect(DATABASE_URL) as conn:
        left = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.outbox").format(sql.Identifier(SCHEMA))
        ).fetchone()
    cleanup()

    missing = len(committed) - len(latencies_ms)
    phantoms = len(rolled_back & set(arrived))
    print(f"committed orders:           {len(committed)}")
    print(f"published and delivered:    {len(latencies_ms)}   (missing: {missing})")
    print(f"rolled back:                {len(rolled_back)}   (delivered anyway: {phantoms})")
    print(f"rows left in the outbox:    {left[0] if left else '?'}")
    if latencies_ms:
        print(
            "commit-to-delivery latency: "
            f"p50 {statistics.median(latencies_ms):.2f} ms, "
            f"p95 {latencies_ms[int(len(latencies_ms) * 0.95) - 1]:.2f} ms, "
            f"max {latencies_ms[-1]:.2f} ms"
        )
    print(f"relay exit code after SIGTERM: {relay_exit}")
    ok = missing == 0 and phantoms == 0 and relay_exit == 0
    print("OK: nothing lost, nothing invented." if ok else "FAILED: see the counts above.")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
