"""Behind a real PgBouncer: the relay, the consumer and publish() through a small pool.

Transaction mode is the common production setup and the hard one: each transaction may
run on another server session, so prepared statements, session settings and LISTEN do
not carry over. Session mode must keep working; statement mode is refused at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import outbox_relay
from outbox_relay.errors import StoreUnavailableError
from outbox_relay.store.inbox import HandlerSession
from outbox_relay.store.schema import migrate
from tests.support.broker import BrokerHelper
from tests.support.consumer import ROOT, effects, make_effects_table
from tests.support.faults import RelayProcess, Tally
from tests.support.http import free_port, get
from tests.support.pgbouncer import PgBouncer, pgbouncer
from tests.support.relay import wait_for
from tests.support.scene import Scene

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PRODUCERS = 8
PER_PRODUCER = 150
KEYS_PER_PRODUCER = 3  # each key written by one producer, in order
# What a session mixed up by a pooler looks like in a log.
SESSION_ERRORS = (
    "prepared statement",
    "bind message supplies",
    "transaction blocks not allowed",
    "idle_in_transaction",
    "unavailable",
    "Traceback",
)


@pytest.fixture
def scene(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, tmp_path: Path
) -> Scene:
    return Scene(database_url, amqp_url, schema, broker, tmp_path)


@pytest.fixture
def transaction_pool(database_url: str, tmp_path: Path) -> Iterator[PgBouncer]:
    with pgbouncer(database_url, tmp_path, pool_mode="transaction") as bouncer:
        yield bouncer


def produce(url: str, schema: str, exchange: str, producer: int) -> None:
    """One message per transaction on the application's own pooled connection, configured
    as the producing guide says (no prepared statements)."""
    with psycopg.connect(url, prepare_threshold=None) as conn:
        for i in range(PER_PRODUCER):
            n = producer * PER_PRODUCER + i
            key = f"p{producer}-{i % KEYS_PER_PRODUCER}"
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key="order.placed",
                payload={"n": n, "key": key},
                partition_key=key,
                schema=schema,
            )
            conn.commit()


def producers(url: str, schema: str, exchange: str) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=produce, args=(url, schema, exchange, p), name=f"producer-{p}")
        for p in range(PRODUCERS)
    ]
    for thread in threads:
        thread.start()
    return threads


@contextlib.contextmanager
def consumer_process(
    url: str, amqp_url: str, schema: str, exchange: str, queue: str, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """tests/support/consumer_app.py in a subprocess, its JSON log in ``log_path``."""
    env = {
        **os.environ,
        "OUTBOX_RELAY_DATABASE_URL": url,
        "OUTBOX_RELAY_AMQP_URL": amqp_url,
        "OUTBOX_RELAY_SCHEMA": schema,
        "TEST_QUEUE": queue,
        "TEST_EXCHANGE": exchange,
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "outbox_relay", "consume"),
                *("tests.support.consumer_app:app", "--log-format", "json", "--concurrency", "2"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def session_errors(text: str) -> list[str]:
    """Lines of a log that show a session error (the line saying what the pooler changed
    names prepared statements too)."""
    return [
        line
        for line in text.splitlines()
        if any(e in line for e in SESSION_ERRORS) and "database.pooler_detected" not in line
    ]


def test_relays_producers_and_consumers_all_through_a_transaction_pool(
    transaction_pool: PgBouncer, scene: Scene
) -> None:
    """Eight producers, two relays sharing the partitions and three consumer processes,
    every connection through a transaction-mode PgBouncer with three server sessions:
    every message is published once and applied once, at its first attempt, and no log
    shows a prepared-statement or session error."""
    url, database_url, amqp_url = transaction_pool.url, scene.database_url, scene.amqp_url
    schema, broker, tmp_path = scene.schema, scene.broker, scene.tmp_path
    migrate(url, schema=schema)  # migrate works through the pool too
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    tally_queue = broker.queue("tally", bind=(exchange, "#"))
    queue = broker.name("consumed")
    for name in (queue, f"{queue}.parking", f"{queue}.retry.500ms"):
        broker.track_queue(name)
    expected = set(range(PRODUCERS * PER_PRODUCER))

    # The order gate too: it must not wait for the relay's own claims, whose server
    # sessions change from one transaction to the next.
    relays = [
        RelayProcess(url, amqp_url, schema, "--order-gate", log_dir=tmp_path) for _ in range(2)
    ]
    consumer_logs = [tmp_path / f"consumer-{i}.log" for i in range(3)]
    try:
        with contextlib.ExitStack() as stack:
            for log_path in consumer_logs:
                stack.enter_context(
                    consumer_process(url, amqp_url, schema, exchange, queue, log_path)
                )
            threads = producers(url, schema, exchange)
            for thread in threads:
                thread.join(60)
            assert wait_for(
                lambda: len(effects(database_url, schema)) >= len(expected), timeout_s=60
            )
            tally = Tally(expected)
            tally.add(broker.collect(tally_queue, quiet_s=1.0))
        codes = [relay.stop() for relay in relays]
    finally:
        for relay in relays:
            relay.kill()

    applied = effects(database_url, schema)
    assert codes == [0, 0]
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates == 0  # nothing crashed: not even the at-least-once window
    assert not tally.out_of_order_keys()
    per_message = Counter(message_id for message_id, _attempt, _note in applied)
    assert len(per_message) == len(expected)
    assert set(per_message.values()) == {1}
    assert {attempt for _id, attempt, _note in applied} == {1}  # no good message retried
    for relay in relays:
        assert session_errors(relay.log_text()) == [], relay.name
        detected = relay.events("database.pooler_detected")
        assert len(detected) == 1
        assert "transaction mode" in detected[0]["detected"]
        assert "no server-side prepared statements" in detected[0]["changes"]
    for log_path in consumer_logs:
        assert session_errors(log_path.read_text(encoding="utf-8")) == [], log_path.name
        detected = [r for r in records(log_path) if r.get("event") == "database.pooler_detected"]
        assert len(detected) == 1
    assert {len(r.events("relay.partitions_changed")) > 0 for r in relays} == {True}


def publish_one(url: str, schema: str, exchange: str, n: int) -> None:
    with psycopg.connect(url, prepare_threshold=None) as conn:
        outbox_relay.publish(
            conn, exchange=exchange, routing_key="k", payload={"n": n}, schema=schema
        )


def waiting_flags(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.outbox_listener WHERE waiting").format(
                sql.Identifier(schema)
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


def relay_wakes_up(url: str, scene: Scene, *args: str, ready: str, flags: int) -> RelayProcess:
    """A relay through ``url`` whose /readyz ends with ``ready`` and that raises ``flags``
    wake-up flags when idle; three messages published one by one through ``url`` each
    arrive; it stops with 0 and logs no session error. Returns it, stopped."""
    schema, broker = scene.schema, scene.broker
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    port = free_port()
    relay = RelayProcess(
        url, scene.amqp_url, schema, "--http-port", str(port), *args, log_dir=scene.tmp_path
    )
    try:
        assert wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=30), relay.log_text()
        assert ready in get(port, "/readyz")[1]
        assert wait_for(lambda: waiting_flags(scene.database_url, schema) == flags, timeout_s=15)
        for n in range(3):
            publish_one(url, schema, exchange, n)
            assert len(broker.drain(queue, expect=1, timeout_s=10)) == 1
        assert relay.stop() == 0
    finally:
        relay.kill()
    assert session_errors(relay.log_text()) == []
    return relay


def test_without_a_listen_url_the_relay_polls_and_says_so(
    transaction_pool: PgBouncer, scene: Scene
) -> None:
    """LISTEN hears nothing through a transaction pool: the relay polls instead, logs it
    once and shows it in /readyz, and raises no wake-up flag producers would pay for."""
    relay = relay_wakes_up(
        transaction_pool.url,
        scene,
        ready="wake-up: polling every 100 ms (LISTEN cannot work through a transaction-mode "
        "pooler; set --listen-database-url to a direct or session-mode URL for it)",
        flags=0,
    )
    (detected,) = relay.events("database.pooler_detected")
    assert "polling for new rows every 100 ms" in detected["changes"]


def test_with_a_listen_url_the_relay_listens_there(
    transaction_pool: PgBouncer, scene: Scene
) -> None:
    """With --listen-database-url (here the direct URL) the relay LISTENs there and raises
    its wake-up flag, so producers writing through the pool wake it with NOTIFY."""
    relay = relay_wakes_up(
        transaction_pool.url,
        scene,
        *("--listen-database-url", scene.database_url),
        ready="; wake-up: LISTEN on --listen-database-url",
        flags=1,
    )
    (detected,) = relay.events("database.pooler_detected")
    assert "LISTEN on --listen-database-url" in detected["changes"]


def refused(url: str, scene: Scene, *args: str) -> str:
    """The log of a relay through ``url`` that must exit 1 at start."""
    relay = RelayProcess(url, scene.amqp_url, scene.schema, *args, log_dir=scene.tmp_path)
    try:
        assert relay.process.wait(30) == 1
    finally:
        relay.kill()
    return relay.log_text()


def test_a_listen_url_through_the_transaction_pool_is_refused(
    transaction_pool: PgBouncer, scene: Scene
) -> None:
    url = transaction_pool.url
    text = refused(url, scene, "--listen-database-url", url)
    assert "--listen-database-url goes through a connection pooler in transaction" in text


def test_a_statement_mode_pool_is_refused_at_start_with_the_fix(scene: Scene) -> None:
    with pgbouncer(scene.database_url, scene.tmp_path, pool_mode="statement") as bouncer:
        text = refused(bouncer.url, scene)
        # A consumer's handler session: the delivery goes back with the reason, and is
        # never retried towards the parking lot as if the handler had failed.
        session = HandlerSession(url=bouncer.url, schema=scene.schema, application_name="t")
        with pytest.raises(StoreUnavailableError, match="pooler in statement mode"):
            session.begin(consumer="c", message_id="m")
    assert "connection pooler in statement mode" in text
    assert "pool_mode = transaction" in text


def test_a_session_mode_pool_keeps_listen_and_prepared_statements(scene: Scene) -> None:
    # A session pool pins a server session per client: the relay's three and a producer's.
    with pgbouncer(scene.database_url, scene.tmp_path, pool_mode="session", pool_size=4) as bouncer:
        relay = relay_wakes_up(
            bouncer.url,
            scene,
            ready="; wake-up: LISTEN",
            flags=1,
        )
    (detected,) = relay.events("database.pooler_detected")
    assert "session mode" in detected["detected"]
    assert detected["changes"].startswith("nothing")


def test_publish_on_connections_that_prepare_works_through_a_transaction_pool(
    transaction_pool: PgBouncer, scene: Scene
) -> None:
    """Applications that kept psycopg's default prepare_threshold: publish() never lets its
    insert be prepared behind the pooler, so concurrent producers do not trip over each
    other's _pg3_0 on the shared server sessions."""
    errors: list[BaseException] = []

    def produce_with_defaults(producer: int) -> None:
        try:
            with psycopg.connect(transaction_pool.url) as conn:  # prepare_threshold=5
                for n in range(30):
                    outbox_relay.publish(
                        conn,
                        exchange="x",
                        routing_key="k",
                        payload={"n": producer * 30 + n},
                        schema=scene.schema,
                    )
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce_with_defaults, args=(p,)) for p in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with psycopg.connect(scene.database_url) as conn:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.outbox").format(sql.Identifier(scene.schema))
        ).fetchone()
    assert count == (180,)
