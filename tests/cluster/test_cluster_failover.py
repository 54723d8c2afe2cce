"""The cluster tier: node failures of a three-node RabbitMQ cluster and a PostgreSQL
promotion under a steady producer, two relays and a consumer chain, all on lists of
hosts. Opt-in (``make cluster-test``): booting the private cluster alone takes about
25 s on the development machine.

The chain: a producer commits an order and its outbox message per transaction; two
relays (each given the broker nodes in another order, so they sit on different nodes)
publish to a topic exchange bound to a quorum queue (retry tier and parking lot
quorum too); ``outbox-relay consume`` writes each message's effect next to its inbox row.

Faults, one after another, each waited out before the next: the node relay A is
connected to stops (``stop_app``), then starts again; the node relay B is connected to
(another one) crashes (SIGKILL of its Erlang VM), then is started again; the PostgreSQL
primary is SIGKILLed and its synchronous standby promoted. Counted at the end:
acknowledged commits without an effect (lost), effects applied twice, keys whose effects
are out of order, and per fault the time from the fault until the effect of an order
committed after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from outbox_relay.store.schema import migrate
from tests.conftest import unique_name
from tests.support.faults import RelayProcess
from tests.support.private_postgres import PrivatePostgres
from tests.support.rabbit_cluster import RabbitCluster
from tests.support.relay import wait_for
from tests.support.steady_producer import SteadyProducer

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
CONSUME = (sys.executable, "-m", "outbox_relay", "consume")
RATE_PER_S = 100
KEYS = 8
# Each failover: from the fault to the effect of an order committed after it. A stopped
# node refuses at once and the next node is tried without backoff; the bound leaves room
# for the quorum queue's leader election and the machine being shared.
RECOVERY_BOUND_S = 30.0


@dataclass
class Fault:
    name: str
    recovered_s: float  # from the start of the fault's command
    command_s: float = 0.0  # how long the command itself took (stop_app, kill + promote)


class Consumer:
    """``outbox-relay consume tests.support.cluster_consumer_app:app``, logs in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*CONSUME, "tests.support.cluster_consumer_app:app", "--log-format", "json"],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)


def _effects(url: str, schema: str) -> list[tuple[int, str]]:
    """(n, key) of every effect, in the order they were applied; [] while unreachable."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            rows = conn.execute(
                sql.SQL("SELECT n, key FROM {} ORDER BY id").format(
                    sql.Identifier(schema, "effects")
                )
            ).fetchall()
    except psycopg.OperationalError:
        return []
    return [(int(n), str(key)) for n, key in rows]


def _node_of(relay: RelayProcess) -> str:
    connected = relay.events("publisher.connected")
    assert connected, relay.log_text()[-3000:]
    return str(connected[-1]["node"])


def _index(cluster: RabbitCluster, node: str) -> int:
    return cluster.index_of_port(int(node.rpartition(":")[2]))


def _recovery(name: str, producer: SteadyProducer, url: str, schema: str, started: float) -> Fault:
    """Wait until, for every key (so for the partitions of both relays), an order
    committed after the fault has its effect."""
    keys = {producer.key_of(n) for n in range(KEYS)}
    first = len(producer.committed)
    assert producer.wait_for(first + KEYS, timeout_s=RECOVERY_BOUND_S), (
        f"{name}: the producer committed too little after the fault: {producer.last_error}"
    )
    after = producer.committed[first]

    def every_key_recovered() -> bool:
        recent = {key for n, key in _effects(url, schema)[-500:] if n >= after}
        return recent >= keys

    assert wait_for(every_key_recovered, timeout_s=RECOVERY_BOUND_S * 2, interval_s=0.2), (
        f"{name}: orders from {after} on had no effect for every key"
    )
    return Fault(name, time.monotonic() - started)


def _out_of_order(effects: list[tuple[int, str]]) -> list[str]:
    seen: set[int] = set()
    last: dict[str, int] = {}
    bad: list[str] = []
    for n, key in effects:
        if n in seen:
            continue
        seen.add(n)
        if last.get(key, -1) > n and key not in bad:
            bad.append(key)
        last[key] = n
    return bad


def test_node_stops_and_a_promotion_lose_nothing(
    cluster: RabbitCluster,
    databases: tuple[PrivatePostgres, PrivatePostgres],
    tmp_path: Path,
) -> None:
    primary, standby = databases
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    url = f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"
    schema = unique_name("c")
    migrate(url, schema=schema)
    SteadyProducer.create_orders(url, schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, n int, key text)").format(
                sql.Identifier(schema, "effects")
            )
        )
    exchange, queue = unique_name("ex"), unique_name("q")
    consumer = Consumer(
        {
            "OUTBOX_RELAY_DATABASE_URL": url,
            "OUTBOX_RELAY_AMQP_URL": cluster.urls([2, 0, 1]),
            "OUTBOX_RELAY_SCHEMA": schema,
            "TEST_EXCHANGE": exchange,
            "TEST_QUEUE": queue,
        },
        tmp_path / "consumer.log",
    )
    relays: list[RelayProcess] = []
    producer = SteadyProducer(url, schema, exchange, keys=KEYS, rate_per_s=RATE_PER_S)
    faults: list[Fault] = []
    try:
        assert wait_for(lambda: "consumer.consuming" in consumer.log_text(), timeout_s=60), (
            consumer.log_text()[-3000:]
        )
        queue_type = cluster.nodes[0].rabbitmqctl(
            "list_queues", "name", "type", "arguments", "--no-table-headers", "-q"
        )
        assert f"{queue}\tquorum" in queue_type, queue_type
        assert "at-least-once" in queue_type, queue_type
        for name, order in (("relay-a", [0, 1, 2]), ("relay-b", [1, 2, 0])):
            relays.append(
                RelayProcess(url, cluster.urls(order), schema, log_dir=tmp_path, name=name)
            )
        producer.start()
        assert wait_for(lambda: len(_effects(url, schema)) >= 100, timeout_s=60), (
            consumer.log_text()[-3000:]
        )

        # 1. The node relay A is on stops; it comes back once the chain recovered.
        first = _index(cluster, _node_of(relays[0]))
        started = time.monotonic()
        command_s = cluster.stop(first)
        name = f"node {first} (relay A's) stopped"
        faults.append(_recovery(name, producer, url, schema, started))
        faults[-1].command_s = command_s
        assert wait_for(lambda: _index(cluster, _node_of(relays[0])) != first, timeout_s=10)
        cluster.start(first)

        # 2. Another node crashes (SIGKILL): relay B's, or the next one when B shares A's.
        second = _index(cluster, _node_of(relays[1]))
        if second == first:
            second = (first + 1) % len(cluster.nodes)
        started = time.monotonic()
        command_s = cluster.kill(second)
        faults.append(_recovery(f"node {second} killed", producer, url, schema, started))
        faults[-1].command_s = command_s
        cluster.respawn(second)

        # 3. The PostgreSQL primary dies; its synchronous standby is promoted.
        started = time.monotonic()
        primary.kill()
        standby.promote()
        command_s = time.monotonic() - started
        faults.append(_recovery("primary killed, standby promoted", producer, url, schema, started))
        faults[-1].command_s = command_s

        producer.stop()
        committed = set(producer.committed)
        assert wait_for(
            lambda: committed <= {n for n, _ in _effects(url, schema)},
            timeout_s=90,
            interval_s=0.5,
        ), (relays[0].log_text()[-3000:], consumer.log_text()[-3000:])
        time.sleep(2)  # anything still in flight lands before the count
    finally:
        producer.stop()
        codes = [relay.stop(timeout_s=30) for relay in relays]
        consumer_code = consumer.stop()

    outcomes = Counter(
        str(r.get("outcome"))
        for r in (json.loads(line) for line in consumer.log_text().splitlines() if line[:1] == "{")
        if r.get("event") == "consumer.message"
    )
    effects = _effects(url, schema)
    applied = [n for n, _ in effects]
    lost = committed - set(applied)
    duplicate_effects = len(applied) - len(set(applied))
    invented = set(applied) - committed - set(producer.uncertain)
    report = (
        f"cluster tier: {len(committed)} committed ({len(producer.uncertain)} uncertain), "
        f"{len(lost)} lost, {duplicate_effects} duplicate effects, "
        f"{len(_out_of_order(effects))} keys out of order; consumer outcomes {dict(outcomes)}; "
        f"boot {cluster.boot_s:.1f}s; "
        + "; ".join(
            f"{f.name}: recovered in {f.recovered_s:.1f}s (command {f.command_s:.1f}s)"
            for f in faults
        )
    )
    print(report)  # the figures, for the record
    assert codes == [0, 0], [r.log_text()[-3000:] for r in relays]
    assert consumer_code == 0, consumer.log_text()[-3000:]
    assert lost == set(), report
    assert duplicate_effects == 0, report
    assert invented == set(), report
    assert _out_of_order(effects) == [], report
    assert all(f.recovered_s < RECOVERY_BOUND_S for f in faults), report
