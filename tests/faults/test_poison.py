"""Rows no producer should have written (inserted with SQL, past ``publish``'s checks):
each gets its own logged outcome; none crashes the relay or holds back another key."""

from __future__ import annotations

import json

import psycopg
import pytest

from outbox_relay.consumer import lenient_frames
from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper, Received
from tests.support.faults import RelayProcess, Tally, insert_raw
from tests.support.private_rabbit import PrivateRabbit
from tests.support.relay import outbox_rows, wait_for
from tests.support.scene import Scene, stops_cleanly

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

TEN_MB = 10 * 1024 * 1024
HUGE_INT = 10**30
MAX_MESSAGE_SIZE = 64 * 1024  # of the private node that refuses a bigger message


def relay_until_settled(
    scene: Scene, queue: str, *args: str
) -> tuple[RelayProcess, list[Received]]:
    """Run a relay with two quick attempts per row until no row is pending (published or
    dead); the relay (stopped, its logs readable) and what ``queue`` received."""
    relay = scene.relay(
        *("--max-attempts", "2", "--retry-base", "0.2", "--retry-max", "0.5"), *args
    )
    with stops_cleanly(relay):
        scene.drained(relay)
        received = scene.broker.collect(queue, quiet_s=1.0)
    return relay, received


def test_poison_rows_fail_alone_and_the_relay_keeps_going(
    scene: Scene, report_fault: Report
) -> None:
    lenient_frames.install_field_codec()
    database_url, schema = scene.database_url, scene.schema
    exchange, queue = scene.route("ok.#")
    missing = scene.broker.name("missing")
    # key -> (exchange, routing key, headers, content type, what the error must name)
    poison: dict[str, tuple[str, str, str, str, str]] = {
        "missing-exchange": (missing, "ok.x", "{}", "application/json", "does not exist"),
        "unroutable": (exchange, "nobody.listens", "{}", "application/json", "unroutable"),
        "huge-int": (exchange, "ok.x", json.dumps({"big": HUGE_INT}), "application/json", "big"),
        "huge-int-in-list": (
            exchange,
            "ok.x",
            json.dumps({"arr": [1, HUGE_INT]}),
            "application/json",
            "arr[1]",
        ),
        "headers-not-an-object": (exchange, "ok.x", '"text"', "application/json", "headers"),
        "long-header-name": (
            exchange,
            "ok.x",
            json.dumps({"h" * 300: 1}),
            "application/json",
            "h" * 20,
        ),
        "long-content-type": (exchange, "ok.x", "{}", "x/" + "y" * 300, "content_type"),
        "long-routing-key": (exchange, "ok." + "r" * 300, "{}", "application/json", "routing"),
        "unreadable-typed-value": (
            exchange,
            "ok.x",
            json.dumps({"price": {"outbox-decimal": "ten"}}),
            "application/json",
            "'price' is the typed value",
        ),
    }
    # Rows AMQP cannot carry are dead after their first attempt; the others may yet work
    # (an exchange or a binding can be created meanwhile) and use their attempts.
    retried = {"missing-exchange", "unroutable"}
    expected: set[int] = set()
    poison_ids: dict[int, str] = {}
    with psycopg.connect(database_url) as conn:
        n = 0
        for key, (ex, rk, headers, ctype, _) in poison.items():
            row_id = insert_raw(
                conn,
                schema,
                exchange=ex,
                key=key,
                n=n,
                routing_key=rk,
                headers=headers,
                content_type=ctype,
            )
            poison_ids[row_id] = key
            n += 1
            # A later row of the same key: waits for the poison row, then goes out.
            insert_raw(conn, schema, exchange=exchange, key=key, n=n)
            expected.add(n)
            n += 1
        # Rows AMQP can carry once converted: a float, a mixed array, a 10 MB payload.
        n_float, n_mixed, n_big = n, n + 1, n + 2
        float_headers = json.dumps({"ratio": 0.5})
        insert_raw(conn, schema, exchange=exchange, key="f", n=n_float, headers=float_headers)
        mixed_headers = json.dumps({"mix": [1, "a", True, None, 2.5, {"x": 1}, [2]]})
        insert_raw(conn, schema, exchange=exchange, key="m", n=n_mixed, headers=mixed_headers)
        big = json.dumps({"n": n_big, "key": "big", "pad": "x" * TEN_MB}).encode()
        insert_raw(conn, schema, exchange=exchange, key="big", n=n_big, payload=big)
        expected |= {n_float, n_mixed, n_big}
        n += 3
        conn.commit()
    scene.insert(exchange, range(n, n + 2000), keys=20, routing_key="ok.y")
    expected |= set(range(n, n + 2000))

    relay, received = relay_until_settled(scene, queue, "--batch-size", "100")

    tally = Tally(expected=expected)
    tally.add(received)
    report_fault(f"poison rows ({len(poison)} kinds) among 2k", tally)
    assert not tally.lost
    assert not tally.invented, "a poison row was published"
    assert tally.out_of_order_keys() == []
    by_n = {int(json.loads(m.body)["n"]): m for m in received}
    # Floats went out as doubles (read as the consumer SDK reads them).
    assert by_n[n_float].properties.headers == {"ratio": 0.5}
    assert by_n[n_mixed].properties.headers == {"mix": [1, "a", True, None, 2.5, {"x": 1}, [2]]}
    assert len(by_n[n_big].body) > TEN_MB

    left = outbox_rows(database_url, schema, "id, last_error, attempts, dead_at IS NOT NULL")
    dead = {row_id: error for row_id, error, _, _ in left}
    assert set(dead) == set(poison_ids), "only the poison rows are left"
    assert all(is_dead for *_, is_dead in left), "each poison row is marked dead"
    attempts = {poison_ids[row_id]: n for row_id, _, n, _ in left}
    assert attempts == {key: 2 if key in retried else 1 for key in poison}, attempts
    logged = {r["row_id"]: r["error"] for r in relay.events("relay.row_dead")}
    for row_id, key in poison_ids.items():
        must_name = poison[key][4]
        assert must_name in dead[row_id], (key, dead[row_id])
        assert logged.get(row_id) == dead[row_id], key
    assert not relay.events("relay.broker_unavailable"), "a poison row cost a reconnect"


def test_a_burst_of_30k_rows_in_one_transaction(scene: Scene, report_fault: Report) -> None:
    """One producer transaction commits 30k rows while the relay sleeps on LISTEN."""
    exchange, queue = scene.route()
    total = 30_000
    relay = scene.relay()
    with stops_cleanly(relay):
        assert wait_for(lambda: relay.events("relay.partitions_changed"), timeout_s=20)
        scene.insert(exchange, range(total), keys=100)
        scene.drained(relay, timeout_s=90)
    tally = scene.tally(queue, range(total))
    report_fault("burst: 30k rows in one transaction", tally)
    assert not tally.lost
    assert tally.duplicates == 0
    assert tally.out_of_order_keys() == []


@pytest.mark.rabbitmq_conf(max_message_size=MAX_MESSAGE_SIZE)
def test_a_message_over_the_brokers_max_size_fails_alone_and_named(
    scene: Scene, own_rabbit: PrivateRabbit, own_broker: BrokerHelper, report_fault: Report
) -> None:
    """On a private node whose max_message_size is lowered in its configuration, so the
    shared broker's limit is never changed under other tests."""
    scene = scene.on(amqp_url=own_rabbit.url, broker=own_broker)
    database_url, schema = scene.database_url, scene.schema
    exchange, queue = scene.route("ok.#")
    limit = MAX_MESSAGE_SIZE
    scene.insert(exchange, range(300), keys=10, routing_key="ok.y")
    with psycopg.connect(database_url) as conn:
        big_id = insert_raw(
            conn, schema, exchange=exchange, key="k3", n=-1, payload=b"x" * (limit + 1)
        )
        conn.commit()
    scene.insert(exchange, range(300, 600), keys=10, routing_key="ok.y")
    _, received = relay_until_settled(scene, queue)
    tally = Tally(expected=set(range(600)))
    tally.add(received)
    report_fault("a message over the broker's max_message_size among 600", tally)
    assert not tally.lost, "an innocent row was blamed for the big one"
    assert not tally.invented
    assert tally.out_of_order_keys() == []
    [(row_id, error, attempts)] = outbox_rows(database_url, schema, "id, last_error, attempts")
    assert row_id == big_id
    assert f"{limit + 1} bytes" in error
    assert "max_message_size" in error
    assert attempts == 1, "dead at its first attempt: no retry can help until the limit moves"
