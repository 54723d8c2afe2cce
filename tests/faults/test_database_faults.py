"""The relay's database sessions ended under it, and PostgreSQL restarted under it (a
private cluster: tests/support/private_postgres.py)."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from outbox_relay.store.schema import migrate
from tests.conftest import unique_name
from tests.faults.conftest import Report
from tests.support.faults import Backlog, Tally, service_proxy
from tests.support.private_postgres import PrivatePostgres
from tests.support.relay import wait_for
from tests.support.scene import Scene, stops_cleanly

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

BATCH = 200
# Duplicates a fault may cause: the relay has up to two batches out (Relay.run_batches).
OUT = 2 * BATCH


def test_work_session_terminated_mid_batch(scene: Scene, report_fault: Report) -> None:
    exchange, queue = scene.route()
    total = 20_000
    scene.insert(exchange, range(total), keys=20)
    relay = scene.relay("--batch-size", str(BATCH))
    terminated = 0
    with scene.draining(relay):
        for _ in range(4):
            assert wait_for(lambda: "work" in relay.backend_pids(), timeout_s=20)
            before = scene.pending()
            assert before > 0, "the backlog drained before the fault; nothing was proved"
            assert scene.publishing(below=before)
            relay.terminate_session("work")
            terminated += 1
    tally = scene.tally(queue, range(total))
    report_fault("pg_terminate_backend: relay's work session", tally, runs=terminated)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= terminated * OUT
    assert tally.out_of_order_keys() == []
    assert relay.events("relay.database_unavailable")
    assert not relay.events("relay.row_failed")


def test_listen_session_terminated_messages_keep_flowing(
    scene: Scene, report_fault: Report
) -> None:
    exchange, queue = scene.route()
    relay = scene.relay("--poll-interval", "0.2")
    latencies: list[float] = []
    tally = Tally(expected=set(range(40)))
    with scene.draining(relay):
        for n in range(40):
            if n % 10 == 0:  # the relay is idle here, asleep on LISTEN
                assert wait_for(lambda: "listener" in relay.backend_pids(), timeout_s=20)
                relay.terminate_session("listener")
            latencies.append(sent_and_received(scene, exchange, queue, n, tally))
    tally.add(scene.broker.drain_all(queue))
    report_fault("pg_terminate_backend: relay's LISTEN session", tally, runs=4)
    assert not tally.lost
    assert tally.duplicates == 0
    assert max(latencies) < 5, latencies


def sent_and_received(scene: Scene, exchange: str, queue: str, n: int, tally: Tally) -> float:
    """Row ``n`` written and received (added to ``tally``): the seconds that took."""
    started = time.monotonic()
    scene.insert(exchange, range(n, n + 1))
    got = scene.broker.drain(queue, expect=1, timeout_s=10)
    latency = time.monotonic() - started
    tally.add(got)
    return latency


def test_lost_notifications_are_caught_by_the_poll_timer(
    scene: Scene, report_fault: Report
) -> None:
    """The trigger never notifies (the relay's wake-up flag is gone, as after a crash of
    the unlogged table): rows still go out within the poll interval."""
    exchange, queue = scene.route()
    relay = scene.relay("--poll-interval", "0.3")
    latencies: list[float] = []
    tally = Tally(expected=set(range(10)))
    flags = sql.SQL("DELETE FROM {}.outbox_listener").format(sql.Identifier(scene.schema))
    with scene.draining(relay):
        assert wait_for(lambda: "listener" in relay.backend_pids(), timeout_s=20)
        for n in range(10):
            time.sleep(0.2)  # asleep again, flag raised
            with psycopg.connect(scene.database_url) as conn:
                conn.execute(flags)
                conn.commit()
            latencies.append(sent_and_received(scene, exchange, queue, n, tally))
    report_fault("NOTIFY lost (poll fallback)", tally)
    assert not tally.lost
    assert max(latencies) < 0.3 + 0.5, latencies


def test_database_connections_cut_and_stalled_by_the_network(
    scene: Scene, report_fault: Report
) -> None:
    """Through a proxy in front of PostgreSQL: cuts drop both sessions at once; a stall
    longer than the lease leaves the relay waiting on the network while the server ends
    its claim; when traffic flows again it learns so, reconnects and goes on."""
    broker = scene.broker
    exchange, queue = scene.route()
    with (
        Backlog(scene.database_url, scene.schema, exchange, keys=20, limit=30_000) as backlog,
        service_proxy(scene.database_url, 5432) as (proxy, proxied),
    ):
        relay = scene.relay(
            *("--batch-size", str(BATCH), "--lease-ttl", "3", "--heartbeat-interval", "1"),
            database_url=proxied,
        )
        try:
            for fault in ("cut", "cut", "stall"):
                published = broker.depth(queue)
                assert wait_for(lambda p=published: broker.depth(queue) > p + 300, timeout_s=20)
                assert scene.pending() > 0, "no backlog; the fault proves nothing"
                if fault == "cut":
                    proxy.cut()
                else:
                    proxy.stalled.set()
                    time.sleep(4)
                    proxy.stalled.clear()
            written = backlog.stop()
            with stops_cleanly(relay):
                scene.drained(relay)
        finally:
            proxy.stalled.clear()
    tally = scene.tally(queue, written)
    report_fault("database connections cut (2) / stalled 4 s (proxy)", tally, runs=3)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= 3 * OUT
    assert tally.out_of_order_keys() == []
    assert len(relay.events("relay.recovered")) >= 2


def test_database_restart_during_a_run(
    scene: Scene, own_postgres: PrivatePostgres, report_fault: Report
) -> None:
    """Restarts PostgreSQL (a fast shutdown ends every session, then it starts again)
    under the relay: on a private cluster, so the shared server and the tests using it
    are untouched."""
    scene = scene.on(database_url=own_postgres.url, schema=unique_name("t"))
    migrate(scene.database_url, schema=scene.schema)
    exchange, queue = scene.route()
    total = 30_000
    relay, left_at_fault = scene.relay_through_restart(
        exchange, own_postgres.restart, "--batch-size", str(BATCH), total=total
    )
    tally = scene.tally(queue, range(total))
    report_fault("database restart (pg_ctl restart -m fast)", tally)
    assert left_at_fault > 0, "the backlog drained before the restart; nothing was proved"
    assert not tally.lost
    assert tally.duplicates <= OUT
    assert tally.out_of_order_keys() == []
    assert relay.events("relay.database_unavailable")
