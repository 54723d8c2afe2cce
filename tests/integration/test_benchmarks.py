"""The benchmark scripts still run: each scenario's quick mode produces its figures.

Speed is never asserted here; benchmarks are scripts (`python -m benchmarks`).
"""

from __future__ import annotations

import importlib
import re

import pytest

from benchmarks.__main__ import available
from benchmarks.common import Env, Report, services

pytestmark = [pytest.mark.integration, pytest.mark.bench]

EXPECTED = {
    "throughput": [
        "relay / ceiling",
        "relay / baseline",
        "--batch-size 1000 / ceiling",
        "partition keys / ceiling",
    ],
    "latency": [
        "p50, relay / dual write",
        "p99, relay / dual write",
        "p50, ",
        "p95",
        "p99, ",
        "max",
    ],
    "idle": ["idle relay CPU", "idle relay database transactions", "wake-ups", "only sleeps"],
    "producer": [
        "relay busy / ceiling, relay busy",
        "relay idle at start / ceiling, relay working",
        "relay idle at start: NOTIFYs sent",
        "uuid4 / uuid7",
        "message id index, relay busy: with / without",
        "message id index, no relay: with / without",
        "relay busy: backlog rows left after its last run",
    ],
    "relays": ["2 relays / 1 relay", "4 relays / 1 relay"],
    "scale": ["drain", "peak RSS", "table size", "index size"],
    "blocked": ["while blocked", "time to drain"],
    "consumer": [
        "raw single-connection commits",
        "SDK with inbox, concurrency 1",
        "SDK with inbox, concurrency 4",
        "FastStream subscriber without inbox",
        "SDK c1 with inbox / FastStream",
        "SDK c4 with inbox / FastStream",
        "SDK c4 with inbox / raw commits",
        "SDK c1 with inbox / raw commits",
        "SDK with inbox, async handlers, concurrency 4",
        "SDK async c4 with inbox / FastStream",
        "SDK async c4 / SDK c4",
    ],
    # and each peer's figures, or the line saying why it was skipped (see below)
    "peers": [
        "outbox-relay: throughput",
        "outbox-relay: commit to delivery p50",
        "outbox-relay: commit to delivery p99",
    ],
    "rate_limit": [
        "rate held after the burst / limit, 50/s",
        "most above rate x window",
        "database round trips per message, 50/s",
        "consumer CPU per message",
        "no limit set: with the flow gate / bare pass-through",
        "no limit set, this process's CPU per message",
    ],
}


@pytest.mark.parametrize("scenario", [name for name in available() if name in EXPECTED])
@pytest.mark.timeout(300)
def test_quick_mode_produces_every_figure(scenario: str, database_url: str, amqp_url: str) -> None:
    report = Report()
    importlib.import_module(f"benchmarks.{scenario}").run(
        Env(database_url=database_url, amqp_url=amqp_url, quick=True), report
    )
    names = [figure.name for figure in report.figures]
    for expected in EXPECTED[scenario]:
        assert any(expected in name for name in names), (expected, names)
    assert all(figure.value == figure.value for figure in report.figures)  # no NaN
    if scenario == "peers":
        from benchmarks.peers import installed

        present, missing = installed()
        for peer in present:
            for figure in ("throughput", "commit to delivery p50", "commit to delivery p99"):
                assert f"{peer}: {figure}" in " ".join(names), (peer, figure, names)
            assert any(name == f"{peer} / outbox-relay: throughput" for name in names), names
        for peer in missing:
            assert any(name.startswith(f"{peer}: skipped (") for name in names), names
    if scenario == "latency":  # beside the dual write and the naive poller of the same run
        ratios = [f for f in report.figures if f.unit == "x"]
        times = [f for f in report.figures if f.unit == "ms"]
        assert [f.target for f in ratios] == ["<= 2 x", "<= 2 x"], ratios
        assert all(f.ceiling is not None and f.baseline is not None for f in times), times


def test_the_results_name_the_servers_and_the_settings_the_figures_depend_on(
    database_url: str, amqp_url: str
) -> None:
    text = services(Env(database_url=database_url, amqp_url=amqp_url, quick=True))
    assert re.fullmatch(
        r"PostgreSQL \d+\.\d+.* \(autovacuum (on|off), synchronous_commit \w+\), "
        r"RabbitMQ \d+\.\d+\.\d+.*",
        text,
    ), text


@pytest.mark.timeout(300)
def test_the_ab_run_compares_this_checkouts_relay_with_another_commits(
    database_url: str, amqp_url: str
) -> None:
    from benchmarks import ab

    report = Report()
    env = Env(database_url=database_url, amqp_url=amqp_url, quick=True)
    ab.run(env, report, "HEAD", rounds=1, count=1_000, seconds=2.0)
    assert [f.name for f in report.figures] == [
        "throughput, 1000 rows, this checkout / HEAD",
        "commit to delivery p50, this checkout / HEAD",
        "commit to delivery p99, this checkout / HEAD",
    ]
    # Both sides ran and delivered: a relay that failed to start from the export has no rate.
    assert set(report.figures[0].extra["msg_per_s"]) == {"this checkout", "HEAD"}
    assert all(rate > 0 for rate in report.figures[0].extra["msg_per_s"].values())


@pytest.mark.timeout(300)
def test_the_floor_measures_each_side_beside_the_dual_write(
    database_url: str, amqp_url: str
) -> None:
    from benchmarks import floor

    env = Env(database_url=database_url, amqp_url=amqp_url, quick=True)
    pooled = floor.measure_sides(env, rounds=1, seconds=1.0)
    assert list(pooled) == ["dual write", "notify, publish", "notify, read, publish", "relay"]
    # measure() fails a side that lost more than 1 %: each side delivered what it sent.
    assert all(side.sent == 1_000 and side.figure("p50") > 0 for side in pooled.values())
