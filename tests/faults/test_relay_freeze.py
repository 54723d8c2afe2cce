"""Two relays; one frozen (SIGSTOP) past its lease while the other takes over, then thawed."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Report
from tests.support.faults import RelayProcess
from tests.support.relay import wait_for
from tests.support.scene import Scene, stops_cleanly

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

BATCH = 200
# Duplicates a fault may cause: the relay has up to two batches out (Relay.run_batches).
OUT = 2 * BATCH
CHUNK = 8000
LEASE_TTL_S = 3.0
ARGS = (
    "--batch-size",
    str(BATCH),
    "--lease-ttl",
    str(LEASE_TTL_S),
    "--heartbeat-interval",
    "0.5",
    "--poll-interval",
    "0.1",
)


def owns_partitions(relay: RelayProcess) -> bool:
    changes = relay.events("relay.partitions_changed")
    return bool(changes) and changes[-1]["owned"] > 0


def test_a_relay_frozen_past_its_lease_publishes_nothing_out_of_order(
    scene: Scene, report_fault: Report
) -> None:
    exchange, queue = scene.route()
    relays = [scene.relay(*ARGS) for _ in range(2)]
    freezes = 0
    written = 0
    with stops_cleanly(*relays):
        for frozen in (relays[0], relays[1], relays[0]):
            other = relays[1] if frozen is relays[0] else relays[0]
            assert wait_for(lambda r=frozen: owns_partitions(r), timeout_s=20), frozen.log_text()
            assert wait_for(lambda r=other: owns_partitions(r), timeout_s=20), other.log_text()
            # A fresh backlog for both relays; freeze one as soon as they are at work on it.
            scene.insert(exchange, range(written, written + CHUNK), keys=50)
            written += CHUNK
            assert scene.publishing(below=CHUNK - 2 * BATCH, timeout_s=10)
            assert scene.pending() > 0, "the backlog drained before the fault"
            frozen.freeze()
            freezes += 1
            # Past the lease: the other relay takes the frozen one's partitions and rows.
            time.sleep(2 * LEASE_TTL_S)
            assert wait_for(lambda r=other: relay_owns_all(r), timeout_s=10), (
                "the live relay did not take over"
            )
            frozen.thaw()
        assert wait_for(lambda: scene.pending() == 0, timeout_s=60)

    tally = scene.tally(queue, range(written))
    report_fault("relay frozen (SIGSTOP) past its lease, 2 relays", tally, runs=freezes)
    assert not tally.lost
    assert not tally.invented
    assert tally.out_of_order_keys() == [], "a thawed relay published behind its successor"
    assert tally.duplicates <= freezes * OUT


def relay_owns_all(relay: RelayProcess) -> bool:
    changes = relay.events("relay.partitions_changed")
    return bool(changes) and changes[-1]["owned"] == changes[-1]["partitions"]
