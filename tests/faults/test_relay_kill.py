"""SIGKILL of the relay process at random points of its loop: nothing committed is lost."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.faults import RelayProcess, Tally, insert_rows, pending
from tests.support.relay import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

TOTAL = 60_000  # the relay drains ~9k rows/s: enough left for the last kill
KILLS = 12
BATCH = 200
FAST_FAILOVER = ("--lease-ttl", "2", "--heartbeat-interval", "0.5", "--poll-interval", "0.1")


def progressed(database_url: str, schema: str, *, since: int) -> bool:
    return wait_for(lambda: pending(database_url, schema) < since, timeout_s=15)


def test_sigkill_at_random_points_loses_nothing(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    tmp_path: Path,
    report_fault: Report,
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    insert_rows(database_url, schema, exchange, range(TOTAL), keys=50)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    args = ("--batch-size", str(BATCH), *FAST_FAILOVER)

    killed_mid_work = 0
    for _ in range(KILLS):
        before = pending(database_url, schema)
        relay = RelayProcess(database_url, amqp_url, schema, *args, log_dir=tmp_path)
        try:
            if before and progressed(database_url, schema, since=before):
                killed_mid_work += 1
            # Anywhere in claim, publish, confirm or settle: a batch takes a few ms.
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            relay.kill()
    left_after_kills = pending(database_url, schema)

    relay = RelayProcess(database_url, amqp_url, schema, *args, log_dir=tmp_path)
    try:
        assert wait_for(lambda: pending(database_url, schema) == 0, timeout_s=60), relay.log_text()[
            -3000:
        ]
    finally:
        assert relay.stop() == 0, relay.log_text()[-3000:]

    tally = Tally(expected=set(range(TOTAL)))
    tally.add(broker.collect(queue, quiet_s=1.0))
    report_fault("relay SIGKILL at random points", tally, runs=KILLS)
    assert killed_mid_work >= 10, f"only {killed_mid_work} kills hit a working relay (seed {seed})"
    assert left_after_kills > 0, "the backlog drained before the last kill; nothing was proved"
    assert not tally.lost, f"{len(tally.lost)} messages lost (seed {seed})"
    assert not tally.invented
    assert tally.duplicates <= KILLS * BATCH, "duplicates beyond the batches in flight"
    assert tally.out_of_order_keys() == []
