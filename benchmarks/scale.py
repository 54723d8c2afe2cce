"""Scale: drain a large committed backlog; throughput over time, the relay's RSS, and the
table and index sizes before and after (bloat left for autovacuum)."""

from __future__ import annotations

import time

from benchmarks.common import (
    PAYLOAD_BYTES,
    Env,
    Figure,
    Report,
    Sampler,
    broker_route,
    fill_committed,
    outbox_schema,
    relay_process,
    table_sizes,
    wait_relayed,
)

SCENARIO = "scale"
RSS_LIMIT_MB = 150
SEGMENTS = 10


def segment_rates(samples: list[tuple[float, int]], total: int) -> list[float]:
    """Messages per second over each tenth of the backlog, in drain order."""
    rates = []
    step = total / SEGMENTS
    start_t, start_left = samples[0]
    for t, left in samples[1:]:
        if start_left - left >= step or left == 0:
            if t > start_t:
                rates.append((start_left - left) / (t - start_t))
            start_t, start_left = t, left
    return rates


def run(env: Env, report: Report) -> None:
    count = env.size(1_000_000, 100_000)
    samples: list[tuple[float, int]] = []
    # Nothing consumes the queue, so it ends with the whole backlog (500 MB at 1M rows).
    # A classic queue keeps messages in memory on RabbitMQ before 3.12 and slows down
    # paging them out as it grows (the last tenth ran at 0.4-0.7 x the first, with 87 s
    # for the drain against 52 s); a lazy queue writes them to disk at once, as every
    # classic queue does from 3.12, so the figures are the relay's and the table's.
    lazy = {"x-queue-mode": "lazy"}
    with outbox_schema(env.database_url) as schema, broker_route(env.amqp_url, **lazy) as route:
        fill_committed(env.database_url, schema, route.exchange, count, size=PAYLOAD_BYTES)
        before = table_sizes(env.database_url, schema)
        with relay_process(env, schema) as process, Sampler(process) as sampler:
            started = time.monotonic()
            samples.append((started, count))
            finished = wait_relayed(
                env,
                schema,
                route.queue,
                count,
                timeout_s=1800,
                interval_s=0.5,
                on_sample=lambda t, left: samples.append((t, left)),
            )
        after = table_sizes(env.database_url, schema)
    rates = segment_rates(samples, count)
    rss = [r / 2**20 for _, r in sampler.rss]
    settled = rss[len(rss) // 10 :] or rss
    report.add(
        Figure(
            SCENARIO,
            f"drain {count} rows",
            round(count / (finished - started)),
            "msg/s",
            extra={"per_tenth_msg_s": [round(r) for r in rates]},
        )
    )
    last_vs_first = rates[-1] / rates[0] if len(rates) > 1 else 1.0
    report.add(
        Figure(
            SCENARIO,
            "throughput, last tenth / first tenth",
            round(last_vs_first, 2),
            "x",
            target=">= 0.8 (no degradation)",
            met=last_vs_first >= 0.8,
        )
    )
    report.add(
        Figure(
            SCENARIO,
            "relay peak RSS",
            round(sampler.peak_mb, 1),
            "MB",
            target=f"< {RSS_LIMIT_MB} MB, flat",
            met=sampler.peak_mb < RSS_LIMIT_MB and max(settled) - min(settled) < 20,
            extra={"rss_growth_mb": round(max(settled) - min(settled), 1)},
        )
    )
    for key in ("table_bytes", "index_bytes"):
        report.add(
            Figure(
                SCENARIO,
                f"outbox {key.split('_')[0]} size before / after",
                round(after[key] / 2**20, 1),
                "MB after",
                extra={"before_mb": round(before[key] / 2**20, 1)},
            )
        )
