"""The relay against real PostgreSQL and RabbitMQ: nothing lost, nothing invented."""

from __future__ import annotations

import json
import select
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo
from structlog.testing import capture_logs

import outbox_relay
from outbox_relay.cli import main
from outbox_relay.consumer import lenient_frames
from outbox_relay.errors import StoreUnavailableError
from outbox_relay.relay import BATCH_BYTES
from outbox_relay.relay.outcome import Failure, Reason
from outbox_relay.store.relay_store import PostgresStore
from outbox_relay.store.schema import migrate
from outbox_relay.store.sqlfiles import notify_channel
from tests.support.broker import BrokerHelper
from tests.support.proxy import TcpProxy
from tests.support.relay import make_relay, outbox_rows, running_relay, wait_for
from tests.support.schemas import private_database

pytestmark = pytest.mark.integration


def write(
    database_url: str,
    schema: str,
    exchange: str,
    items: list[dict[str, object]],
    *,
    commit: bool = True,
    **kw: object,
) -> list[str]:
    with psycopg.connect(database_url) as conn:
        ids = [
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key=str(item.get("rk", "order.created")),
                payload=item,
                schema=schema,
                **kw,  # type: ignore[arg-type]
            )
            for item in items
        ]
        if commit:
            conn.commit()
        else:
            conn.rollback()
    return ids


def bodies(received: list) -> list[dict[str, object]]:  # type: ignore[type-arg]
    return [json.loads(r.body) for r in received]


def test_committed_rows_are_published_and_deleted_rolled_back_rows_never(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    kept = write(database_url, schema, exchange, [{"n": i} for i in range(50)])
    write(database_url, schema, exchange, [{"n": -i} for i in range(1, 21)], commit=False)

    with running_relay(database_url, amqp_url, schema):
        received = broker.drain(queue, expect=50)
        assert wait_for(lambda: not outbox_rows(database_url, schema))
        received += broker.drain_all(queue)

    assert sorted(r.properties.message_id for r in received) == sorted(kept)
    assert sorted(b["n"] for b in bodies(received)) == list(range(50))


def test_every_property_reaches_the_consumer(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    lenient_frames.install_field_codec()
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "invoice.#"))
    with psycopg.connect(database_url) as conn:
        json_id = outbox_relay.publish(
            conn,
            exchange=exchange,
            routing_key="invoice.paid",
            payload={"total": 12.5},
            headers={
                "tenant": "acme",
                "version": 3,
                "ratio": 0.25,
                "tags": ["a", "b"],
                "nested": {"k": True},
            },
            schema=schema,
        )
        raw_id = outbox_relay.publish(
            conn,
            exchange=exchange,
            routing_key="invoice.raw",
            payload=b"\x00\x01binary",
            content_type="application/x-thing",
            schema=schema,
        )
        conn.commit()

    with running_relay(database_url, amqp_url, schema):
        received = {r.routing_key: r for r in broker.drain(queue, expect=2)}

    paid, raw = received["invoice.paid"], received["invoice.raw"]
    assert json.loads(paid.body) == {"total": 12.5}
    assert paid.exchange == exchange
    assert paid.properties.message_id == str(json_id)
    assert paid.properties.content_type == "application/json"
    assert paid.properties.delivery_mode == 2
    assert paid.properties.timestamp
    assert paid.properties.timestamp > 1_700_000_000
    assert paid.properties.headers == {
        "tenant": "acme",
        "version": 3,
        "ratio": 0.25,  # a double, read as the consumer SDK reads it
        "tags": ["a", "b"],
        "nested": {"k": True},
    }
    assert raw.body == b"\x00\x01binary"
    assert raw.properties.content_type == "application/x-thing"
    assert raw.properties.message_id == str(raw_id)


def test_unroutable_row_is_kept_retried_then_marked_dead_while_others_flow(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "routed.#"))
    write(database_url, schema, exchange, [{"n": 1, "rk": "nobody.listens"}])
    write(database_url, schema, exchange, [{"n": i, "rk": "routed.x"} for i in range(2, 12)])

    with running_relay(
        database_url, amqp_url, schema, max_attempts=3, retry_base_s=0.05, retry_max_s=0.1
    ):
        received = broker.drain(queue, expect=10)
        assert wait_for(
            lambda: (
                outbox_rows(database_url, schema, "attempts, dead_at IS NOT NULL") == [(3, True)]
            )
        ), outbox_rows(database_url, schema, "attempts, dead_at, last_error")

    assert sorted(b["n"] for b in bodies(received)) == list(range(2, 12))
    [(error,)] = outbox_rows(database_url, schema, "last_error")
    assert "unroutable" in error
    assert "nobody.listens" in error
    assert exchange in error


def test_a_message_id_published_twice_goes_out_twice_each_with_its_own_outcome(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    # Message ids are not unique in the outbox (no index on them): the same id, in one
    # claim, twice to a bound routing key and once to one nobody listens to. They go out
    # one at a time (a return names only the id; see test_publisher_batches.py), each
    # with its own outcome: both routed copies go out, in order; the unroutable one stays.
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "routed.#"))
    message_id = uuid.uuid4()
    items = [
        {"n": 1, "rk": "routed.x"},
        {"n": 2, "rk": "nobody.listens"},
        {"n": 3, "rk": "routed.x"},
    ]
    with psycopg.connect(database_url) as conn:
        for item in items:
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key=str(item["rk"]),
                payload=item,
                message_id=message_id,
                schema=schema,
            )

    with running_relay(database_url, amqp_url, schema, max_attempts=1):
        received = broker.drain(queue, expect=2)
        assert wait_for(
            lambda: (
                outbox_rows(database_url, schema, "routing_key, dead_at IS NOT NULL")
                == [("nobody.listens", True)]
            )
        ), outbox_rows(database_url, schema, "routing_key, dead_at, last_error")

    assert [b["n"] for b in bodies(received)] == [1, 3]
    assert {r.properties.message_id for r in received} == {str(message_id)}
    [(error,)] = outbox_rows(database_url, schema, "last_error")
    assert "unroutable" in error


def test_missing_exchange_fails_its_row_and_holds_back_only_its_key(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    missing = broker.name("missing")
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn,
            exchange=exchange,
            routing_key="k",
            payload={"key": "a", "seq": 1},
            partition_key="a",
            schema=schema,
        )
        outbox_relay.publish(
            conn,
            exchange=missing,
            routing_key="k",
            payload={"key": "a", "seq": 2},
            partition_key="a",
            schema=schema,
        )
        for seq in (3, 4):
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key="k",
                payload={"key": "a", "seq": seq},
                partition_key="a",
                schema=schema,
            )
        for seq in range(1, 6):
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key="k",
                payload={"key": "b", "seq": seq},
                partition_key="b",
                schema=schema,
            )
        conn.commit()

    with running_relay(database_url, amqp_url, schema, retry_base_s=30, retry_max_s=60):
        received = broker.drain(queue, expect=6)
        assert wait_for(lambda: len(outbox_rows(database_url, schema)) == 3)
        received += broker.drain_all(queue, quiet_s=1.0)

    got = [(b["key"], b["seq"]) for b in bodies(received)]
    assert got == [("a", 1)] + [("b", s) for s in range(1, 6)]
    left = outbox_rows(database_url, schema, "exchange, attempts, last_error")
    assert [(ex, attempts) for ex, attempts, _ in left] == [
        (missing, 1),
        (exchange, 0),
        (exchange, 0),
    ]
    assert f"exchange '{missing}' does not exist on vhost '/'" in left[0][2]
    assert "outbox-relay topology apply" in left[0][2]


def test_delayed_rows_wait_for_their_time(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    write(database_url, schema, exchange, [{"n": "late"}], delay=1.5)
    write(database_url, schema, exchange, [{"n": "now"}])
    with running_relay(database_url, amqp_url, schema):
        first = broker.drain(queue, expect=1)
        assert bodies(first) == [{"n": "now"}]
        assert broker.drain(queue, expect=1, timeout_s=0.8) == []
        assert bodies(broker.drain(queue, expect=1, timeout_s=5)) == [{"n": "late"}]


class IterationCounter:
    """A relay observer that counts the loop's iterations (one claim each)."""

    def __init__(self) -> None:
        self.iterations = 0

    def batch_settled(self, **_: object) -> None:
        pass

    def iteration(self, now: object) -> None:
        self.iterations += 1

    def partitions(self, owned: int) -> None:
        pass

    def outage(self, service: str) -> None:
        pass

    def dependency(self, service: str, *, up: bool, refused: bool) -> None:
        pass

    def iterations_over(self, seconds: float) -> int:
        before = self.iterations
        time.sleep(seconds)
        return self.iterations - before

    def wait_asleep(self) -> None:
        """Until the relay has stopped claiming: its flag is up and it waits."""
        assert wait_for(lambda: self.iterations_over(0.3) == 0, timeout_s=10)


def test_after_a_scheduled_row_is_published_the_idle_relay_sleeps_again(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    # The relay learns the row's time when it raises its wake-up flag, sleeps until
    # then, publishes it, and must then sleep again, not claim in a loop.
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    write(database_url, schema, exchange, [{"n": "late"}], delay=1.0)
    counter = IterationCounter()
    with running_relay(database_url, amqp_url, schema, observer=counter):
        assert bodies(broker.drain(queue, expect=1, timeout_s=5)) == [{"n": "late"}]
        assert wait_for(lambda: not outbox_rows(database_url, schema))
        assert counter.iterations_over(1.0) <= 5


def test_a_delayed_row_published_while_the_relay_sleeps_goes_out_at_its_time(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    # Its NOTIFY wakes the relay before the row is due; the relay must learn when it is
    # due then, not find it at the backstop poll or the next heartbeat (here 3-4 s away).
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    counter = IterationCounter()
    with running_relay(
        database_url,
        amqp_url,
        schema,
        observer=counter,
        poll_interval_s=4.0,
        heartbeat_interval_s=3.0,
    ):
        counter.wait_asleep()
        write(database_url, schema, exchange, [{"n": "late"}], delay=0.5)
        started = time.monotonic()
        assert bodies(broker.drain(queue, expect=1, timeout_s=5)) == [{"n": "late"}]
        assert time.monotonic() - started < 1.2
        assert counter.iterations_over(1.0) <= 5


def test_a_notify_read_with_a_heartbeats_answer_is_not_lost(database_url: str, schema: str) -> None:
    # The heartbeat and the flag ask their questions on the LISTEN connection. A NOTIFY
    # that arrives meanwhile is read with the answer, and the socket the relay sleeps on
    # does not signal it again: the store must still report it.
    store = PostgresStore(url=database_url, schema=schema, relay_id="heard", lease_ttl_s=8.0)
    notify = sql.SQL("NOTIFY {}, 'x'").format(sql.Identifier(notify_channel(schema)))
    store.connect()
    try:
        store.heartbeat()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(notify)
        assert select.select([store.listen_fileno()], [], [], 5.0)[0], "it arrived"
        store.heartbeat()
        assert not select.select([store.listen_fileno()], [], [], 0.0)[0], "read with it"
        assert store.notices_waiting()
        assert store.drain_notifications().count == 1
        assert not store.notices_waiting()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(notify)
        assert select.select([store.listen_fileno()], [], [], 5.0)[0]
        assert store.notices_waiting(), "on the socket"
        assert store.drain_notifications().count == 1
        assert not store.notices_waiting()
    finally:
        store.close()


def test_rows_no_notify_announced_go_out_at_the_poll_and_are_reported_once(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    # A writer that neither uses publish() nor calls outbox_wake(): the backstop poll
    # finds its rows, and the relay says once how to wake it up properly.
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    counter = IterationCounter()
    insert = sql.SQL(
        "INSERT INTO {}.outbox (message_id, exchange, routing_key, payload, content_type)"
        " VALUES (gen_random_uuid(), %s, 'k', %s, 'application/json')"
    ).format(sql.Identifier(schema))

    def warnings() -> list[Any]:
        return [e for e in logs if e["event"] == "relay.rows_without_wake_up"]

    def write_one(n: int, *, wake: bool) -> None:
        counter.wait_asleep()
        with psycopg.connect(database_url) as conn:
            conn.execute(insert, (exchange, json.dumps({"n": n}).encode()))
            if wake:
                conn.execute(sql.SQL("SELECT {}.outbox_wake()").format(sql.Identifier(schema)))
            conn.commit()
        assert bodies(broker.drain(queue, expect=1, timeout_s=10)) == [{"n": n}]

    with (
        capture_logs() as logs,
        running_relay(database_url, amqp_url, schema, observer=counter, poll_interval_s=0.3),
    ):
        write_one(0, wake=True)
        assert warnings() == [], "announced by outbox_wake(): nothing to report"
        write_one(1, wake=False)
        write_one(2, wake=False)
    assert len(warnings()) == 1, "logged once, not per row"
    assert "outbox_wake()" in warnings()[0]["hint"]


def test_broker_down_at_start_then_up_delivers_everything(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    target = urlsplit(amqp_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    proxy.accepting = False
    proxied = urlunsplit(
        target._replace(netloc=f"{target.username}:{target.password}@127.0.0.1:{proxy.port}")
    )
    try:
        write(database_url, schema, exchange, [{"n": i} for i in range(100)])
        with running_relay(database_url, proxied, schema, reconnect_max_s=0.5):
            assert broker.drain(queue, expect=1, timeout_s=1.5) == []
            proxy.accepting = True
            received = broker.drain(queue, expect=100, timeout_s=20)
            assert wait_for(lambda: not outbox_rows(database_url, schema))
    finally:
        proxy.close()
    assert sorted(b["n"] for b in bodies(received)) == list(range(100))


def test_a_restarted_relay_publishes_nothing_already_settled(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    write(database_url, schema, exchange, [{"n": i} for i in range(300)])
    with running_relay(database_url, amqp_url, schema, batch_size=50):
        first = broker.drain(queue, expect=300)
        assert wait_for(lambda: not outbox_rows(database_url, schema))
    with running_relay(database_url, amqp_url, schema, batch_size=50):
        write(database_url, schema, exchange, [{"n": 300}])
        second = broker.drain(queue, expect=1)
        second += broker.drain_all(queue, quiet_s=1.0)
    assert len(first) == 300
    assert bodies(second) == [{"n": 300}]


def test_order_per_key_holds_over_many_batches(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with psycopg.connect(database_url) as conn:
        messages = [
            outbox_relay.OutboxMessage(
                exchange=exchange,
                routing_key="k",
                payload={"key": f"k{i % 7}", "seq": i},
                partition_key=f"k{i % 7}",
            )
            for i in range(700)
        ]
        outbox_relay.publish_many(conn, messages, schema=schema)
        conn.commit()
    with running_relay(database_url, amqp_url, schema, batch_size=37):
        received = broker.drain(queue, expect=700)
    per_key: dict[str, list[int]] = {}
    for body in bodies(received):
        per_key.setdefault(str(body["key"]), []).append(int(body["seq"]))  # type: ignore[call-overload]
    assert len(received) == 700
    assert all(seqs == sorted(seqs) for seqs in per_key.values())


def test_a_second_relay_on_the_same_schema_stands_by(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    write(database_url, schema, exchange, [{"n": i} for i in range(2000)])
    with (
        running_relay(database_url, amqp_url, schema, batch_size=20),
        running_relay(database_url, amqp_url, schema, batch_size=20),
    ):
        received = broker.drain(queue, expect=2000, timeout_s=60)
        received += broker.drain_all(queue)
    assert sorted(b["n"] for b in bodies(received)) == list(range(2000))


def test_run_batch_settles_in_the_claim_transaction(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    broker.queue(bind=(exchange, "#"))
    write(database_url, schema, exchange, [{"n": i} for i in range(5)])
    # Entered, it takes every partition: it is the only relay.
    with make_relay(database_url, amqp_url, schema) as relay:
        result = relay.run_batch()
    assert (result.claimed, result.published, result.failed) == (5, 5, 0)
    assert outbox_rows(database_url, schema) == []


def test_a_row_with_a_header_amqp_cannot_carry_fails_alone_and_holds_back_its_key(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with psycopg.connect(database_url) as conn:
        for key, seq, headers in [
            ("a", 1, "{}"),
            ("b", 1, '{"big": 1000000000000000000000000000000}'),  # > 64 bits, set by SQL
            ("b", 2, "{}"),
            ("c", 1, "{}"),
        ]:
            conn.execute(
                psycopg.sql.SQL(
                    "INSERT INTO {}.outbox (message_id, exchange, routing_key, payload,"
                    " content_type, headers, partition_key) VALUES (gen_random_uuid(), %s, 'k',"
                    " %s, 'application/json', %s::jsonb, %s)"
                ).format(psycopg.sql.Identifier(schema)),
                (exchange, json.dumps({"key": key, "seq": seq}).encode(), headers, key),
            )
        conn.commit()
    with make_relay(database_url, amqp_url, schema) as relay:
        result = relay.run_batch()

    assert (result.claimed, result.published, result.failed, result.held) == (4, 2, 1, 1)
    got = [(b["key"], b["seq"]) for b in bodies(broker.drain(queue, expect=2))]
    assert got == [("a", 1), ("c", 1)]
    left = outbox_rows(database_url, schema, "partition_key, attempts, last_error")
    assert [(key, attempts) for key, attempts, _ in left] == [("b", 1), ("b", 0)]
    assert "'big'" in left[0][2]
    assert "64-bit" in left[0][2]


def test_a_claim_held_past_the_lease_ends_as_an_outage_not_an_error(
    database_url: str, schema: str, broker: BrokerHelper
) -> None:
    """A relay paused inside its claim (SIGSTOP, a VM pause) finds its session ended by
    idle_in_transaction_session_timeout; that is a reconnect, not a fatal error."""
    exchange = broker.exchange()
    write(database_url, schema, exchange, [{"n": 1}])
    store = PostgresStore(url=database_url, schema=schema, relay_id="paused", lease_ttl_s=0.3)
    store.connect()
    try:
        store.heartbeat()
        claim = store.claim(10, BATCH_BYTES)
        assert len(claim.rows) == 1
        time.sleep(0.8)  # frozen past the lease
        with pytest.raises(StoreUnavailableError, match="idle longer than the lease"):
            claim.settle([], [])
    finally:
        store.close()
    assert len(outbox_rows(database_url, schema)) == 1


def test_empty_claims_leave_the_claim_prepared(database_url: str, schema: str) -> None:
    """psycopg forgets a connection's prepared statements on every ROLLBACK: an empty
    claim that ended with one would have every claim after it planned again."""
    store = PostgresStore(url=database_url, schema=schema, relay_id="empty", lease_ttl_s=8.0)
    store.connect()
    try:
        store.heartbeat()
        for _ in range(10):  # psycopg prepares a statement at its sixth execution
            store.claim(10, BATCH_BYTES).release()
        claim = store.claim(10, BATCH_BYTES)
        conn = claim.connection
        assert conn is not None
        prepared = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        claim.release()
    finally:
        store.close()
    assert [s for (s,) in prepared if "SKIP LOCKED" in s], prepared


def test_a_settle_planned_on_a_small_outbox_stays_cheap_as_deleted_rows_pile_up(
    database_url: str, schema: str
) -> None:
    """The settle's DELETE is prepared, and PostgreSQL may keep one generic plan for it
    until the outbox is vacuumed or analyzed. Made while the table held a row at a time,
    that plan must not read the whole table once the rows deleted since have piled up
    there (3000 rows of 1 kB: more than 400 pages)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A vacuum would have the statement planned again, on the table as it is then.
        conn.execute(
            sql.SQL("ALTER TABLE {}.outbox SET (autovacuum_enabled = false)").format(
                sql.Identifier(schema)
            )
        )
    # PostgreSQL keeps a generic plan after five executions when it looks no dearer than
    # planning each one; here the store's sessions make it at once, on the small table.
    generic = make_conninfo(database_url, options="-c plan_cache_mode=force_generic_plan")
    store = PostgresStore(url=generic, schema=schema, relay_id="settles", lease_ttl_s=8.0)
    store.connect()
    try:
        store.heartbeat()
        with psycopg.connect(database_url) as producer:
            for seq in range(10):  # psycopg prepares a statement at its sixth execution
                publish_key_a(producer, schema, "never-published", seq=seq)
                producer.commit()
                claim = store.claim(10, BATCH_BYTES)
                claim.settle([row.id for row in claim.rows], [])
            for _ in range(3000):
                outbox_relay.publish(
                    producer, exchange="x", routing_key="k", payload=b"x" * 1000, schema=schema
                )
            producer.commit()
            producer.execute(sql.SQL("DELETE FROM {}.outbox").format(sql.Identifier(schema)))
            producer.commit()
            publish_key_a(producer, schema, "never-published", seq=10)
            producer.commit()
        claim = store.claim(10, BATCH_BYTES)
        assert claim.connection is not None
        pages = _pages_the_settle_reads(claim.connection)
        claim.release()
    finally:
        store.close()
    assert pages < 40, pages


def _pages_the_settle_reads(conn: psycopg.Connection[Any]) -> int:
    """Pages read by the session's prepared DELETE, run as it is planned now, for a row
    that does not exist (EXPLAIN ANALYZE runs it; it deletes nothing)."""
    names = conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'DELETE FROM%'"
    ).fetchall()
    assert len(names) == 1, names
    explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {}({})").format(
        sql.Identifier(names[0][0]), sql.Literal("{0}")
    )
    row = conn.execute(explain).fetchone()
    assert row is not None
    top = row[0][0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def publish_key_a(conn: psycopg.Connection[Any], schema: str, exchange: str, *, seq: int) -> None:
    outbox_relay.publish(
        conn,
        exchange=exchange,
        routing_key="k",
        payload={"seq": seq},
        partition_key="a",
        schema=schema,
    )


def test_the_order_gate_waits_for_an_older_open_transaction_of_the_same_key(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with (
        running_relay(database_url, amqp_url, schema, order_gate=True),
        psycopg.connect(database_url) as slow,
        psycopg.connect(database_url) as fast,
    ):
        publish_key_a(slow, schema, exchange, seq=1)
        publish_key_a(fast, schema, exchange, seq=2)
        fast.commit()
        write(database_url, schema, exchange, [{"seq": "unkeyed"}])
        assert bodies(broker.drain(queue, expect=1)) == [{"seq": "unkeyed"}], (
            "unkeyed rows pass the gate"
        )
        assert broker.drain(queue, expect=1, timeout_s=1.5) == [], (
            "seq 2 went out while seq 1 could still commit"
        )
        slow.commit()
        received = broker.drain(queue, expect=2)
    assert bodies(received) == [{"seq": 1}, {"seq": 2}]


def test_without_the_gate_a_later_id_that_commits_first_goes_first(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """The documented limit the gate exists for: it must really exist, or the gate is moot."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with (
        running_relay(database_url, amqp_url, schema),
        psycopg.connect(database_url) as slow,
        psycopg.connect(database_url) as fast,
    ):
        publish_key_a(slow, schema, exchange, seq=1)
        publish_key_a(fast, schema, exchange, seq=2)
        fast.commit()
        assert bodies(broker.drain(queue, expect=1)) == [{"seq": 2}]
        slow.commit()
        assert bodies(broker.drain(queue, expect=1)) == [{"seq": 1}]


def test_the_order_gate_does_not_wait_for_the_relays_own_claim(database_url: str) -> None:
    """A claim made while another claim of the same relay is open (two batches out)
    must not wait for that claim's transaction: the gate leaves out the relay's own
    work sessions, named to the server as an array of their pids. In a database of its
    own: the gate waits for every writing transaction in its database, and any other
    test's (or program's) open one would hold seq 2 back too."""
    with private_database(database_url) as url:
        schema = "public"
        migrate(url, schema=schema)
        claimed = _claim_behind_own_claim(url, schema)
    assert [json.loads(p) for p in claimed] == [{"seq": 2}]


def _claim_behind_own_claim(database_url: str, schema: str) -> list[bytes]:
    exchange = "never-published"  # nothing is sent: the store alone
    with psycopg.connect(database_url) as conn:
        publish_key_a(conn, schema, exchange, seq=1)
    store = PostgresStore(
        url=database_url, schema=schema, relay_id="gated", lease_ttl_s=8.0, order_gate=True
    )
    store.connect()
    try:
        store.heartbeat()
        out = store.claim(10, BATCH_BYTES)  # locks seq 1: its transaction now has an id
        with psycopg.connect(database_url) as conn:
            publish_key_a(conn, schema, exchange, seq=2)
        following = store.claim(10, BATCH_BYTES)
        claimed = [row.payload for row in following.rows]
        following.release()
        out.release()
    finally:
        store.close()
    return claimed


def test_the_order_gate_gives_up_after_its_maximum_wait(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with (
        running_relay(database_url, amqp_url, schema, order_gate=True, order_gate_max_wait_s=1.0),
        psycopg.connect(database_url) as long_report,
    ):
        long_report.execute(
            "SELECT pg_current_xact_id()"
        )  # an unrelated transaction with an id, left open
        write(database_url, schema, exchange, [{"seq": 1}], partition_key="a")
        assert broker.drain(queue, expect=1, timeout_s=0.5) == []
        assert bodies(broker.drain(queue, expect=1, timeout_s=5)) == [{"seq": 1}]
        long_report.rollback()


def test_a_failing_row_at_the_attempts_maximum_fails_alone_and_the_batch_is_not_resent(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """attempts = 2**31 - 1, written with SQL: recording its failure used to overflow,
    which ended the relay and rolled back the DELETE of the rows it had just published
    (published again by every restart)."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "routed.#"))
    write(database_url, schema, exchange, [{"n": -1, "rk": "nobody.listens"}])
    write(database_url, schema, exchange, [{"n": i, "rk": "routed.x"} for i in range(100)])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {0}.outbox SET attempts = 2147483647"
                " WHERE id = (SELECT min(id) FROM {0}.outbox)"
            ).format(sql.Identifier(schema))
        )

    with running_relay(database_url, amqp_url, schema):
        received = broker.drain(queue, expect=100)
        assert wait_for(
            lambda: (
                outbox_rows(database_url, schema, "attempts, dead_at IS NOT NULL")
                == [(2147483647, True)]
            )
        ), outbox_rows(database_url, schema, "attempts, dead_at, last_error")
        received += broker.drain_all(queue)

    assert sorted(b["n"] for b in bodies(received)) == list(range(100)), "each exactly once"
    [(error,)] = outbox_rows(database_url, schema, "last_error")
    assert "unroutable" in error


def test_a_failure_that_cannot_be_recorded_does_not_undo_the_published_rows(
    database_url: str, schema: str, broker: BrokerHelper
) -> None:
    """One failure whose record the database refuses (an interval out of range) does not
    take the batch's DELETE and the other failures down with it: the other rows' records
    stand, and the refused one is marked dead with the reason."""
    exchange = broker.exchange()
    write(database_url, schema, exchange, [{"n": n} for n in range(4)])
    store = PostgresStore(url=database_url, schema=schema, relay_id="settling", lease_ttl_s=8.0)
    store.connect()
    try:
        store.heartbeat()
        claim = store.claim(10, BATCH_BYTES)
        published, bad, nul, fine = (row.id for row in claim.rows)
        claim.settle(
            [published],
            [
                Failure(bad, "nacked", 1e300, dead=False, reason=Reason.NACKED),
                # PostgreSQL text cannot hold NUL: recorded with the byte escaped.
                Failure(nul, "nul \x00 byte", 1.0, dead=False, reason=Reason.NACKED),
                Failure(fine, "nacked", 1.0, dead=False, reason=Reason.NACKED),
            ],
        )
        # The same connection serves the next claim: nothing of the settle is left open.
        again = store.claim(10, BATCH_BYTES)
        assert again.rows == []
        again.release()
    finally:
        store.close()
    rows = outbox_rows(database_url, schema, "id, attempts, dead_at IS NOT NULL, last_error")
    by_id = {row_id: (attempts, dead, error) for row_id, attempts, dead, error in rows}
    assert set(by_id) == {bad, nul, fine}, "the published row stays deleted"
    assert by_id[fine] == (1, False, "nacked")
    assert by_id[nul] == (1, False, "nul \\x00 byte")
    attempts, dead, error = by_id[bad]
    assert (attempts, dead) == (1, True)
    assert error.startswith("nacked")
    assert "could not be recorded" in error


def test_rows_made_due_by_failed_retry_are_announced_to_the_relay(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    # `outbox-relay failed retry` wakes the relay as publish() does: its rows go out at
    # once, and the relay has no reason to blame writers that skip the wake-up.
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    write(database_url, schema, exchange, [{"n": "dead"}])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {}.outbox SET dead_at = now()").format(sql.Identifier(schema)))
    counter = IterationCounter()
    with (
        capture_logs() as logs,
        running_relay(database_url, amqp_url, schema, observer=counter, poll_interval_s=0.3),
    ):
        counter.wait_asleep()
        result = CliRunner().invoke(
            main, ["failed", "retry", "--yes", "--database-url", database_url, "--schema", schema]
        )
        assert result.exit_code == 0, result.output
        assert bodies(broker.drain(queue, expect=1, timeout_s=10)) == [{"n": "dead"}]
    assert [e for e in logs if e["event"] == "relay.rows_without_wake_up"] == []
