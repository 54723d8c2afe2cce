"""Relay throughput: a committed backlog of 512 B rows relayed with confirms into a bound
durable queue, next to the ceiling (raw pika, pipelined confirms, no database) and the
baseline (the naive relay) measured in the same run. Also reported: a smaller batch, and
a backlog whose rows carry partition keys."""

from __future__ import annotations

import time

import psycopg

from benchmarks import naive, rawpika
from benchmarks.common import (
    PAYLOAD_BYTES,
    ROUTING_KEY,
    Env,
    Figure,
    Report,
    Rounds,
    broker_route,
    fill,
    fill_committed,
    median,
    outbox_schema,
    payload,
    purge,
    ratio_target,
    relay_process,
    wait_listening,
    wait_relayed,
)

SCENARIO = "throughput"


# Rounds of ceiling, relay, relay with a smaller batch and baseline; each ratio is the
# median of the rounds' own ratios (single runs varied by 5-10 % on the same machine).
ROUNDS = 3
# The default batch until the byte budget (--batch-bytes) bounded a batch's memory: a
# smaller batch keeps fewer messages unconfirmed, which RabbitMQ confirms less cheaply
# (see rawpika.WINDOW). Reported beside the default.
SMALL_BATCH = 1000
# A keyed backlog: every batch holds rows of every key, so each shares its keys with the
# batch out before it (one key per aggregate, as in most applications).
KEYS = 1000


def relay_rate(
    env: Env, count: int, *args: str, size: int = PAYLOAD_BYTES, keys: int | None = None
) -> float:
    """Messages per second from the backlog's commit until all are in the queue and the
    outbox is empty; ``args`` go to ``outbox-relay run``."""
    with (
        outbox_schema(env.database_url) as schema,
        broker_route(env.amqp_url) as route,
        relay_process(env, schema, *args),
    ):
        wait_listening(env.database_url, schema)
        with psycopg.connect(env.database_url) as conn:
            fill(conn, schema, route.exchange, count, size=size, keys=keys)
            conn.commit()
            started = time.monotonic()
        finished = wait_relayed(env, schema, route.queue, count, timeout_s=600)
    return count / (finished - started)


def ceiling_rate(env: Env, count: int) -> float:
    with broker_route(env.amqp_url) as route:
        bodies = [payload(seq=i) for i in range(count)]
        rate = rawpika.publish_rate(env.amqp_url, route.exchange, ROUTING_KEY, bodies)
        purge(env.amqp_url, route.queue)
    return rate


def baseline_rate(env: Env, count: int) -> float:
    with outbox_schema(env.database_url) as schema, broker_route(env.amqp_url) as route:
        fill_committed(env.database_url, schema, route.exchange, count, size=PAYLOAD_BYTES)
        with naive.NaiveRelay(env.database_url, env.amqp_url, schema, poll_interval_s=1.0):
            started = time.monotonic()
            finished = wait_relayed(env, schema, route.queue, count, timeout_s=600)
    return count / (finished - started)


def run(env: Env, report: Report) -> None:
    count = env.size(100_000, 5_000)
    baseline_count = env.size(5_000, 1_000)
    measured = Rounds()
    for measured.round in range(env.size(ROUNDS, 1)):
        measured.add("ceiling", ceiling_rate(env, count))
        measured.add("relay", relay_rate(env, count))
        measured.add("small batch", relay_rate(env, count, "--batch-size", str(SMALL_BATCH)))
        measured.add("keyed", relay_rate(env, count, keys=KEYS))
        measured.add("baseline", baseline_rate(env, baseline_count))
    rate = {case: median(rates) for case, rates in measured.rates.items()}
    report.add(
        Figure(
            SCENARIO,
            f"relay, {count} rows of {PAYLOAD_BYTES} B",
            round(rate["relay"]),
            "msg/s",
            ceiling=round(rate["ceiling"]),
            baseline=round(rate["baseline"]),
            extra={"baseline_rows": baseline_count, "rounds": len(measured.rates["relay"])},
        )
    )
    for name, case, reference, at_least in (
        ("relay / ceiling", "relay", "ceiling", 0.8),
        ("relay / baseline", "relay", "baseline", 10),
    ):
        report.add(
            ratio_target(
                SCENARIO,
                name,
                measured.ratio(case, reference),
                at_least=at_least,
                against=reference,
                extra={"round_ratios": measured.ratios(case, reference)},
            )
        )
    for name, case in (
        (f"relay, --batch-size {SMALL_BATCH} / ceiling", "small batch"),
        (f"relay, rows of {KEYS} partition keys / ceiling", "keyed"),
    ):
        report.add(
            Figure(
                SCENARIO,
                name,
                round(measured.ratio(case, "ceiling"), 3),
                "x",
                extra={"round_ratios": measured.ratios(case, "ceiling")},
            )
        )
