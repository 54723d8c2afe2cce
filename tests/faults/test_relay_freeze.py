"""Two relays; one frozen (SIGSTOP) past its lease while the other takes over, then thawed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.faults import RelayProcess, Tally, insert_rows, pending
from tests.support.relay import wait_for

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
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    relays = [
        RelayProcess(database_url, amqp_url, schema, *ARGS, log_dir=tmp_path) for _ in range(2)
    ]
    freezes = 0
    written = 0
    try:
        for frozen in (relays[0], relays[1], relays[0]):
            other = relays[1] if frozen is relays[0] else relays[0]
            assert wait_for(lambda r=frozen: owns_partitions(r), timeout_s=20), frozen.log_text()
            assert wait_for(lambda r=other: owns_partitions(r), timeout_s=20), other.log_text()
            # A fresh backlog for both relays; freeze one as soon as they are at work on it.
            insert_rows(database_url, schema, exchange, range(written, written + CHUNK), keys=50)
            written += CHUNK
            assert wait_for(lambda: pending(database_url, schema) < CHUNK - 2 * BATCH, timeout_s=10)
            assert pending(database_url, schema) > 0, "the backlog drained before the fault"
            frozen.freeze()
            freezes += 1
            # Past the lease: the other relay takes the frozen one's partitions and rows.
            time.sleep(2 * LEASE_TTL_S)
            assert wait_for(lambda r=other: relay_owns_all(r), timeout_s=10), (
                "the live relay did not take over"
            )
            frozen.thaw()
        assert wait_for(lambda: pending(database_url, schema) == 0, timeout_s=60)
    finally:
        for relay in relays:
            relay.thaw()
        codes = [relay.stop() for relay in relays]
    assert codes == [0, 0], [r.log_text()[-3000:] for r in relays]

    tally = Tally(expected=set(range(written)))
    tally.add(broker.collect(queue))
    report_fault("relay frozen (SIGSTOP) past its lease, 2 relays", tally, runs=freezes)
    assert not tally.lost
    assert not tally.invented
    assert tally.out_of_order_keys() == [], "a thawed relay published behind its successor"
    assert tally.duplicates <= freezes * OUT


def relay_owns_all(relay: RelayProcess) -> bool:
    changes = relay.events("relay.partitions_changed")
    return bool(changes) and changes[-1]["owned"] == changes[-1]["partitions"]
