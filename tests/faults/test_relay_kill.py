"""SIGKILL of the relay process at random points of its loop: nothing committed is lost."""

from __future__ import annotations

import random

import pytest

from tests.faults.conftest import Report
from tests.support.scene import FAST_FAILOVER_ARGS, Scene, stops_cleanly

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

TOTAL = 60_000  # the relay drains ~9k rows/s: enough left for the last kill
KILLS = 12
BATCH = 200
OUT = 2 * BATCH  # the relay has up to two batches out: a kill may send both again


def test_sigkill_at_random_points_loses_nothing(scene: Scene, report_fault: Report) -> None:
    exchange, queue = scene.route()
    scene.insert(exchange, range(TOTAL), keys=50)
    seed = random.randrange(2**32)
    args = ("--batch-size", str(BATCH), *FAST_FAILOVER_ARGS)

    killed_mid_work = scene.relays_killed(
        *args, kills=KILLS, rng=random.Random(seed), within_s=0.25
    )
    left_after_kills = scene.pending()

    relay = scene.relay(*args)
    with stops_cleanly(relay):
        scene.drained(relay)

    tally = scene.tally(queue, range(TOTAL))
    report_fault("relay SIGKILL at random points", tally, runs=KILLS)
    assert killed_mid_work >= 10, f"only {killed_mid_work} kills hit a working relay (seed {seed})"
    assert left_after_kills > 0, "the backlog drained before the last kill; nothing was proved"
    assert not tally.lost, f"{len(tally.lost)} messages lost (seed {seed})"
    assert not tally.invented
    assert tally.duplicates <= KILLS * OUT, "duplicates beyond the batches in flight"
    assert tally.out_of_order_keys() == []
