"""The broker connection closed, cut, stalled, and the broker restarted under the relay."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.faults import Backlog, RelayProcess, Tally, broker_proxy, close_broker_connection
from tests.support.private_rabbit import PrivateRabbit
from tests.support.relay import wait_for
from tests.support.scene import Scene, stops_cleanly

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

BATCH = 200
# Duplicates a fault may cause: the relay has up to two batches out (Relay.run_batches).
OUT = 2 * BATCH


def test_connection_closed_by_the_broker_and_cut_by_the_network(
    scene: Scene, report_fault: Report
) -> None:
    broker = scene.broker
    exchange, queue = scene.route()
    faults = 0
    with (
        Backlog(scene.database_url, scene.schema, exchange, keys=20, limit=40_000) as backlog,
        broker_proxy(scene.amqp_url) as (proxy, proxied),
    ):
        relay = scene.relay("--batch-size", str(BATCH), amqp_url=proxied)
        with stops_cleanly(relay):
            for round_ in range(6):
                published = broker.depth(queue)
                assert wait_for(lambda p=published: broker.depth(queue) > p + 300, timeout_s=20)
                assert scene.pending() > 0, "no backlog; the fault proves nothing"
                if round_ % 2 == 0:
                    assert close_broker_connection(proxy), "the relay's connection was not found"
                else:
                    proxy.cut()
                faults += 1
            written = backlog.stop()
            scene.drained(relay)
    tally = scene.tally(queue, written)
    report_fault("broker connection closed (rabbitmqctl) / cut (proxy)", tally, runs=faults)
    assert not tally.lost
    assert not tally.invented
    assert tally.duplicates <= faults * OUT
    assert tally.out_of_order_keys() == []
    assert relay.events("relay.recovered"), "the relay never noticed the faults"
    assert not relay.events("relay.row_failed"), "a lost connection counted against a row"


def stalled_run(
    scene: Scene,
    *args: str,
    stall: Callable[[RelayProcess], object],
    receive_buffer_bytes: int | None = None,
    reads_only: bool = False,
) -> tuple[RelayProcess, Tally]:
    """Relay 6000 rows through a proxy that stalls, mid-batch, while ``stall`` runs;
    with ``reads_only`` the broker's answers still come through (see TcpProxy)."""
    exchange, queue = scene.route()
    total = 6000
    scene.insert(exchange, range(total))
    with broker_proxy(scene.amqp_url, receive_buffer_bytes=receive_buffer_bytes) as (
        proxy,
        proxied,
    ):
        relay = scene.relay("--batch-size", str(BATCH), *args, amqp_url=proxied)
        with stops_cleanly(relay):
            assert scene.publishing(below=total)
            stalled = proxy.reads_stalled if reads_only else proxy.stalled
            stalled.set()
            try:
                stall(relay)
            finally:
                stalled.clear()
            scene.drained(relay)
    return relay, scene.tally(queue, range(total))


def until_unavailable(timeout_s: float) -> Callable[[RelayProcess], object]:
    """A stall that lasts until the relay gives the broker up (or ``timeout_s``)."""
    return lambda relay: wait_for(
        lambda: relay.events("relay.broker_unavailable"), timeout_s=timeout_s
    )


def test_a_stall_shorter_than_the_confirm_timeout_is_waited_out_and_logged(
    scene: Scene, report_fault: Report
) -> None:
    relay, tally = stalled_run(
        scene,
        *("--confirm-timeout", "20", "--lease-ttl", "20"),
        stall=lambda _relay: time.sleep(4),
    )
    report_fault("broker stalled 4 s < confirm timeout", tally)
    assert not tally.lost
    assert tally.duplicates == 0, "the relay gave up on confirms that were only slow"
    assert not relay.events("relay.broker_unavailable")
    [delayed] = relay.events("publisher.confirms_delayed")
    assert delayed["unconfirmed"] > 0
    assert delayed["confirm_timeout_s"] == 20
    assert relay.events("publisher.confirms_resumed")


def test_a_stall_longer_than_the_confirm_timeout_reconnects_and_resends_the_batch(
    scene: Scene, report_fault: Report
) -> None:
    # The warning comes after SLOW_WAIT_S (2 s) of one wait; the timeout counts from the
    # batch's send, and with two batches out its wait can start a second or more later:
    # 5 s leaves the warning room to come first.
    relay, tally = stalled_run(scene, "--confirm-timeout", "5", stall=until_unavailable(20))
    report_fault("broker stalled > confirm timeout (5 s)", tally)
    assert not tally.lost
    assert tally.duplicates <= OUT
    [outage] = relay.events("relay.broker_unavailable")
    assert "no confirms within 5 s" in outage["error"]
    assert relay.events("publisher.confirms_delayed")


def test_a_hung_broker_is_found_dead_by_tcp_before_any_timeout_of_the_relays_own(
    scene: Scene, report_fault: Report
) -> None:
    """The broker stops reading mid-batch (a hung peer: its window closes) and stays so.
    The confirm timeout (60 s) and the lease (30 s) are far off; TCP_USER_TIMEOUT (the
    dead-peer timeout, 3 s) ends the connection, and the relay reconnects and delivers.

    Only the reading stops: the confirms of what the proxy already took still arrive, so
    the relay goes on to send into the closed window. (Stalled both ways, a stall that
    came after the relay had sent its whole batch left it nothing to send: no zero
    window, only the confirm timeout.)"""
    waited: list[float] = []

    def until_found_dead(relay: RelayProcess) -> None:
        started = time.monotonic()
        assert wait_for(lambda: relay.events("relay.broker_unavailable"), timeout_s=25)
        waited.append(time.monotonic() - started)

    relay, tally = stalled_run(
        scene,
        *("--dead-peer-timeout", "3", "--confirm-timeout", "60", "--lease-ttl", "30"),
        *("--heartbeat-interval", "2"),
        stall=until_found_dead,
        receive_buffer_bytes=4096,
        reads_only=True,
    )
    report_fault("broker hung (zero window), dead-peer timeout 3 s", tally)
    assert not tally.lost
    assert tally.duplicates <= OUT
    [outage] = relay.events("relay.broker_unavailable")
    assert "timed out" in outage["error"], outage
    assert waited[0] < 15, f"found dead after {waited[0]:.1f} s"


def test_broker_restart_during_a_run(
    scene: Scene,
    own_rabbit: PrivateRabbit,
    own_broker: BrokerHelper,
    report_fault: Report,
) -> None:
    """Restarts the broker's application (`stop_app`/`start_app`) under the relay: on a
    private node, so the shared broker and the tests using it are untouched."""
    scene = scene.on(amqp_url=own_rabbit.url, broker=own_broker)
    exchange, queue = scene.route()
    total = 30_000
    relay, left_at_fault = scene.relay_through_restart(
        exchange,
        own_rabbit.restart_app,
        *("--batch-size", str(BATCH), "--max-attempts", "1000"),
        total=total,
    )
    own_broker.reconnect()
    tally = scene.tally(queue, range(total))
    report_fault("broker restart (stop_app/start_app)", tally)
    assert left_at_fault > 0, "the backlog drained before the restart; nothing was proved"
    assert not tally.lost
    assert tally.duplicates <= OUT
    assert tally.out_of_order_keys() == []
    assert relay.events("relay.recovered")


def test_a_stall_longer_than_the_lease_ends_the_wait_before_the_confirm_timeout(
    scene: Scene, report_fault: Report
) -> None:
    """The confirm wait is bounded by the partition lease too: the database ends a claim
    left idle for the lease TTL, so the relay gives up, reconnects and resends."""
    relay, tally = stalled_run(
        scene,
        *("--confirm-timeout", "30", "--lease-ttl", "3", "--heartbeat-interval", "1"),
        stall=until_unavailable(15),
    )
    report_fault("broker stalled > lease (3 s) < confirm timeout", tally)
    assert not tally.lost
    assert tally.duplicates <= OUT
    [outage] = relay.events("relay.broker_unavailable")
    assert "lease ran out while confirms were outstanding" in outage["error"]
    # What the broker did confirm was settled in time: the database session survived.
    assert not relay.events("relay.database_unavailable")
