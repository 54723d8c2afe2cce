"""Several relays on one outbox: throughput with 1, 2 and 4 relay processes draining the
same committed backlog, each reported as a ratio to the single relay in the same run.

On a 2-core machine the relays, PostgreSQL and RabbitMQ share the same two cores, so
this shows what leases cost and what parallelism is left, not how far relays scale on a
bigger host.
"""

from __future__ import annotations

import contextlib
import time

from benchmarks.common import (
    Env,
    Figure,
    Report,
    broker_route,
    fill_committed,
    median,
    outbox_schema,
    relay_process,
    wait_relayed,
)
from outbox_relay.store.status import read_status

SCENARIO = "relays"
RELAY_COUNTS = (1, 2, 4)
SETTLE_TIMEOUT_S = 30.0
# Frequent heartbeats, so a relay that joins gets its share within a second or two (the
# others hand partitions over at their heartbeats). The lease outlasts the confirms of
# the batches out: four relays keep up to 32,000 messages unconfirmed on two cores, which
# took over 2 s to confirm, and a 3 s lease (publishing stops 1 s before it ends) cut
# batches short and published them again.
RELAY_ARGS = ("--heartbeat-interval", "0.3", "--lease-ttl", "10")


def wait_balanced(database_url: str, schema: str, relays: int) -> None:
    """Until ``relays`` relays hold every partition between them."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = read_status(database_url, schema=schema)
        shares = [len(r.partitions) for r in status.relays]
        if (
            len(shares) == relays
            and not status.unowned_partitions
            and max(shares) - min(shares) <= 1
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(
        f"{relays} relays did not share the partitions within {SETTLE_TIMEOUT_S:g} s"
    )


def drain_rate(env: Env, relays: int, count: int) -> float:
    """Messages per second for ``relays`` relays to drain ``count`` committed rows."""
    with (
        outbox_schema(env.database_url) as schema,
        broker_route(env.amqp_url) as route,
        contextlib.ExitStack() as stack,
    ):
        for _ in range(relays):
            stack.enter_context(relay_process(env, schema, *RELAY_ARGS))
        wait_balanced(env.database_url, schema, relays)
        # The relays start publishing while the backlog is still being written (in
        # 50k-row transactions); the clock starts before the first commit.
        started = time.monotonic()
        fill_committed(env.database_url, schema, route.exchange, count, size=512)
        finished = wait_relayed(env, schema, route.queue, count, timeout_s=600)
    return count / (finished - started)


def run(env: Env, report: Report) -> None:
    count = env.size(50_000, 5_000)
    rounds = 1 if env.quick else 3
    rates: dict[int, list[float]] = {n: [] for n in RELAY_COUNTS}
    for _ in range(rounds):
        for relays in RELAY_COUNTS:  # interleaved, so drift hits every count alike
            rates[relays].append(drain_rate(env, relays, count))
    single = median(rates[1])
    for relays in RELAY_COUNTS:
        rate = median(rates[relays])
        report.add(
            Figure(
                SCENARIO,
                f"{relays} relay{'s' if relays > 1 else ''}, {count:,} rows",
                round(rate),
                "msg/s",
                baseline=round(single),
                extra={"samples": rates[relays]},
            )
        )
        if relays > 1:  # no target: on 2 cores this shows the cost of sharing, not scaling
            report.add(Figure(SCENARIO, f"{relays} relays / 1 relay", round(rate / single, 3), "x"))
