"""The relay's database sessions ended under it, and PostgreSQL restarted under it (a
private cluster: tests/support/private_postgres.py)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from outbox_relay.store.schema import migrate
from tests.conftest import unique_name
from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.faults import (
    Backlog,
    RelayProcess,
    Tally,
    insert_rows,
    pending,
    service_proxy,
)
from tests.support.private_postgres import PrivatePostgres
from tests.support.relay import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

BATCH = 200
# Duplicates a fault may cause: the relay has up to two batches out (Relay.run_batches).
OUT = 2 * BATCH


def drain_and_stop(relay: RelayProcess, database_url: str, schema: str) -> None:
    try:
        assert wait_for(
            lambda: pending(database_url, schema) == 0 or not relay.alive, timeout_s=60
        ), relay.log_text()[-4000:]
        assert relay.alive, relay.log_text()[-4000:]
    finally:
        assert relay.stop() == 0, relay.log_text()[-4000:]


def test_work_session_terminated_mid_batch(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    total = 20_000
    insert_rows(database_url, schema, exchange, range(total), keys=20)
    relay = RelayProcess(
        database_url, amqp_url, schema, "--batch-size", str(BATCH), log_dir=tmp_path
    )
    terminated = 0
    try:
        for _ in range(4):
            assert wait_for(lambda: "work" in relay.backend_pids(), timeout_s=20)
            before = pending(database_url, schema)
            assert before > 0, "the backlog drained before the fault; nothing was proved"
            assert wait_for(lambda b=before: pending(database_url, schema) < b, timeout_s=20)
            relay.terminate_session("work")
            terminated += 1
    finally:
        drain_and_stop(relay, database_url, schema)
    tally = Tally(expected=set(range(total)))
    tally.add(broker.collect(queue))
    report_fault("pg_terminate_backend: relay's work session", tally, runs=terminated)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= terminated * OUT
    assert tally.out_of_order_keys() == []
    assert relay.events("relay.database_unavailable")
    assert not relay.events("relay.row_failed")


def test_listen_session_terminated_messages_keep_flowing(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    relay = RelayProcess(database_url, amqp_url, schema, "--poll-interval", "0.2", log_dir=tmp_path)
    latencies: list[float] = []
    tally = Tally(expected=set(range(40)))
    try:
        for n in range(40):
            if n % 10 == 0:  # the relay is idle here, asleep on LISTEN
                assert wait_for(lambda: "listener" in relay.backend_pids(), timeout_s=20)
                relay.terminate_session("listener")
            started = time.monotonic()
            insert_rows(database_url, schema, exchange, range(n, n + 1))
            got = broker.drain(queue, expect=1, timeout_s=10)
            latencies.append(time.monotonic() - started)
            tally.add(got)
    finally:
        drain_and_stop(relay, database_url, schema)
    tally.add(broker.drain_all(queue))
    report_fault("pg_terminate_backend: relay's LISTEN session", tally, runs=4)
    assert not tally.lost
    assert tally.duplicates == 0
    assert max(latencies) < 5, latencies


def test_lost_notifications_are_caught_by_the_poll_timer(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    """The trigger never notifies (the relay's wake-up flag is gone, as after a crash of
    the unlogged table): rows still go out within the poll interval."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    relay = RelayProcess(database_url, amqp_url, schema, "--poll-interval", "0.3", log_dir=tmp_path)
    latencies: list[float] = []
    tally = Tally(expected=set(range(10)))
    flags = sql.SQL("DELETE FROM {}.outbox_listener").format(sql.Identifier(schema))
    try:
        assert wait_for(lambda: "listener" in relay.backend_pids(), timeout_s=20)
        for n in range(10):
            time.sleep(0.2)  # asleep again, flag raised
            with psycopg.connect(database_url) as conn:
                conn.execute(flags)
                conn.commit()
            started = time.monotonic()
            insert_rows(database_url, schema, exchange, range(n, n + 1))
            got = broker.drain(queue, expect=1, timeout_s=10)
            latencies.append(time.monotonic() - started)
            tally.add(got)
    finally:
        drain_and_stop(relay, database_url, schema)
    report_fault("NOTIFY lost (poll fallback)", tally)
    assert not tally.lost
    assert max(latencies) < 0.3 + 0.5, latencies


def test_database_connections_cut_and_stalled_by_the_network(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    """Through a proxy in front of PostgreSQL: cuts drop both sessions at once; a stall
    longer than the lease leaves the relay waiting on the network while the server ends
    its claim; when traffic flows again it learns so, reconnects and goes on."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    backlog = Backlog(database_url, schema, exchange, keys=20, limit=30_000)
    written = range(0)
    with service_proxy(database_url, 5432) as (proxy, proxied):
        relay = RelayProcess(
            proxied,
            amqp_url,
            schema,
            "--batch-size",
            str(BATCH),
            "--lease-ttl",
            "3",
            "--heartbeat-interval",
            "1",
            log_dir=tmp_path,
        )
        try:
            for fault in ("cut", "cut", "stall"):
                published = broker.depth(queue)
                assert wait_for(lambda p=published: broker.depth(queue) > p + 300, timeout_s=20)
                assert pending(database_url, schema) > 0, "no backlog; the fault proves nothing"
                if fault == "cut":
                    proxy.cut()
                else:
                    proxy.stalled.set()
                    time.sleep(4)
                    proxy.stalled.clear()
            written = backlog.stop()
            drain_and_stop(relay, database_url, schema)
        finally:
            backlog.stop()
            proxy.stalled.clear()
            relay.kill()
    tally = Tally(expected=set(written))
    tally.add(broker.collect(queue))
    report_fault("database connections cut (2) / stalled 4 s (proxy)", tally, runs=3)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= 3 * OUT
    assert tally.out_of_order_keys() == []
    assert len(relay.events("relay.recovered")) >= 2


def test_database_restart_during_a_run(
    own_postgres: PrivatePostgres,
    amqp_url: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    """Restarts PostgreSQL (a fast shutdown ends every session, then it starts again)
    under the relay: on a private cluster, so the shared server and the tests using it
    are untouched."""
    database_url = own_postgres.url
    schema = unique_name("t")
    migrate(database_url, schema=schema)
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    total = 30_000
    insert_rows(database_url, schema, exchange, range(total), keys=20)
    relay = RelayProcess(
        database_url, amqp_url, schema, "--batch-size", str(BATCH), log_dir=tmp_path
    )
    try:
        assert wait_for(lambda: pending(database_url, schema) < total, timeout_s=20)
        left_at_fault = pending(database_url, schema)
        own_postgres.restart()
        drain_and_stop(relay, database_url, schema)
    finally:
        relay.kill()
    tally = Tally(expected=set(range(total)))
    tally.add(broker.collect(queue))
    report_fault("database restart (pg_ctl restart -m fast)", tally)
    assert left_at_fault > 0, "the backlog drained before the restart; nothing was proved"
    assert not tally.lost
    assert tally.duplicates <= OUT
    assert tally.out_of_order_keys() == []
    assert relay.events("relay.database_unavailable")
