"""Bad load: a 10 MB row and a burst of rows while RabbitMQ blocks publishers (memory
alarm forced with a tiny watermark), then released. The relay must wait
(connection.blocked) without growing, and drain once released.

The watermark is always restored to 0.4, whatever happens.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import psycopg

import outbox_relay
from benchmarks.common import (
    PAYLOAD_BYTES,
    Env,
    Figure,
    Report,
    Sampler,
    broker_route,
    fill,
    outbox_schema,
    queue_depth,
    relay_process,
    wait_listening,
    wait_relayed,
)

SCENARIO = "blocked"
BIG_BYTES = 10 * 1024 * 1024
NORMAL_WATERMARK = "0.4"
ALARM_WATERMARK = "0.0000001"


def set_watermark(value: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "set_vm_memory_high_watermark", value],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def memory_alarm() -> Iterator[None]:
    """RabbitMQ blocks publishers inside the block; the watermark is restored after it."""
    try:
        set_watermark(ALARM_WATERMARK)
        yield
    finally:
        set_watermark(NORMAL_WATERMARK)


def run(env: Env, report: Report) -> None:
    burst = env.size(100_000, 5_000)
    blocked_s = 5.0 if env.quick else 20.0
    with (
        outbox_schema(env.database_url) as schema,
        broker_route(env.amqp_url) as route,
        relay_process(env, schema) as process,
        Sampler(process) as sampler,
    ):
        wait_listening(env.database_url, schema)
        rss_idle = process.memory_info().rss / 2**20
        with memory_alarm():
            time.sleep(1.0)
            with psycopg.connect(env.database_url) as conn:
                outbox_relay.publish(
                    conn,
                    exchange=route.exchange,
                    routing_key="bench.big",
                    payload=b"b" * BIG_BYTES,
                    content_type="application/octet-stream",
                    schema=schema,
                )
                fill(conn, schema, route.exchange, burst, size=PAYLOAD_BYTES)
                conn.commit()
            time.sleep(blocked_s)
            peak_blocked = sampler.peak_mb
            stuck = queue_depth(env.amqp_url, route.queue)
            released = time.monotonic()
        finished = wait_relayed(env, schema, route.queue, burst + 1, timeout_s=600)
    report.add(
        Figure(
            SCENARIO,
            f"relay peak RSS while blocked ({burst} rows + one of 10 MB waiting)",
            round(peak_blocked, 1),
            "MB",
            target="bounded (< 150 MB)",
            met=peak_blocked < 150,
            extra={"rss_idle_mb": round(rss_idle, 1), "delivered_while_blocked": stuck},
        )
    )
    report.add(
        Figure(
            SCENARIO,
            "time to drain after release",
            round(finished - released, 2),
            "s",
            extra={"rate_msg_s": round((burst + 1) / (finished - released))},
        )
    )
