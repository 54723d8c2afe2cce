"""The installed wheel at work: `migrate`, `sql`, then a message published and relayed.

Run by `.ci/run` with the python of a fresh virtual environment that has only the wheel
installed, from a directory outside the checkout, so nothing is imported from the source
tree. Uses its own schema, exchange and queue (random names) and removes them.

    OUTBOX_RELAY_TEST_DATABASE_URL=... OUTBOX_RELAY_TEST_AMQP_URL=... python wheel_smoke.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import psycopg
from psycopg import sql

import outbox_relay

DATABASE_URL = os.environ["OUTBOX_RELAY_TEST_DATABASE_URL"]
AMQP_URL = os.environ["OUTBOX_RELAY_TEST_AMQP_URL"]
MESSAGES = 20
DELIVERY_TIMEOUT_S = 20
CLI = Path(sys.executable).with_name("outbox-relay")


class SmokeError(Exception):
    """The installed package did not do what the checkout's tests say it does."""


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    if result.returncode != 0:
        raise SmokeError(
            f"`outbox-relay {' '.join(args)}` exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout


def check_installed_from_the_wheel() -> None:
    package = Path(outbox_relay.__file__).resolve()
    if Path(sys.prefix).resolve() not in package.parents:
        raise SmokeError(f"outbox_relay was imported from {package}, not from {sys.prefix}")
    sql_files = sorted((package.parent / "sql").rglob("*.sql"))
    if not sql_files:
        raise SmokeError(f"the wheel holds no SQL files under {package.parent / 'sql'}")
    print(f"installed: {package.parent} ({len(sql_files)} SQL files)")


def round_trip(schema: str, exchange: str, queue: str) -> None:
    cli("migrate", "--database-url", DATABASE_URL, "--schema", schema)
    ddl = cli("sql", "--schema", schema)
    if "CREATE TABLE" not in ddl or schema not in ddl:
        raise SmokeError(f"`outbox-relay sql` printed no DDL for {schema}:\n{ddl[:2000]}")

    channel = pika.BlockingConnection(pika.URLParameters(AMQP_URL)).channel()
    channel.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
    channel.queue_declare(queue, durable=False)
    channel.queue_bind(queue, exchange, "smoke.#")

    with psycopg.connect(DATABASE_URL) as conn:
        sent = {
            str(
                outbox_relay.publish(
                    conn,
                    exchange=exchange,
                    routing_key="smoke.sent",
                    payload={"n": n},
                    schema=schema,
                )
            )
            for n in range(MESSAGES)
        }
        conn.commit()

    env = {
        **os.environ,
        "OUTBOX_RELAY_DATABASE_URL": DATABASE_URL,
        "OUTBOX_RELAY_AMQP_URL": AMQP_URL,
        "OUTBOX_RELAY_SCHEMA": schema,
        "OUTBOX_RELAY_LOG_LEVEL": "warning",
    }
    relay = subprocess.Popen([str(CLI), "run"], env=env)
    arrived: set[str] = set()
    try:
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while arrived != sent and time.monotonic() < deadline and relay.poll() is None:
            method, properties, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                channel.connection.process_data_events(time_limit=0.05)
            else:
                arrived.add(properties.message_id)
    finally:
        relay.send_signal(signal.SIGTERM)
        exit_code = relay.wait(30)
        channel.connection.close()
    if arrived != sent:
        raise SmokeError(
            f"{len(sent - arrived)} of {MESSAGES} messages did not arrive within "
            f"{DELIVERY_TIMEOUT_S} s (relay exit code {relay.returncode})"
        )
    if exit_code != 0:
        raise SmokeError(f"`outbox-relay run` exited {exit_code} after SIGTERM")
    print(f"round trip: {MESSAGES} messages published, relayed and received; relay exit 0")


def cleanup(schema: str, exchange: str, queue: str) -> None:
    channel = pika.BlockingConnection(pika.URLParameters(AMQP_URL)).channel()
    channel.queue_delete(queue)
    channel.exchange_delete(exchange)
    channel.connection.close()
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def main() -> None:
    check_installed_from_the_wheel()
    suffix = uuid.uuid4().hex[:10]
    schema, exchange, queue = (
        f"wheel_smoke_{suffix}",
        f"wheel_smoke.{suffix}",
        f"wheel_smoke.{suffix}",
    )
    try:
        round_trip(schema, exchange, queue)
    finally:
        cleanup(schema, exchange, queue)


if __name__ == "__main__":
    try:
        main()
    except SmokeError as exc:
        sys.exit(f"wheel smoke test failed: {exc}")
