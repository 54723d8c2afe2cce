"""Bad load: a 10 MB row and a burst of rows while RabbitMQ blocks publishers (memory
alarm forced with a tiny watermark), then released. The relay must wait
(connection.blocked) without growing, and drain once released.

The alarm blocks every publisher of the node, so the scenario runs on a private RabbitMQ
node of its own (tests/support/private_rabbit.py), never on the broker at
OUTBOX_RELAY_TEST_AMQP_URL, which other runs may share; the node is stopped afterwards,
whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

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
from tests.support.private_rabbit import PrivateRabbit, private_rabbit

SCENARIO = "blocked"
BIG_BYTES = 10 * 1024 * 1024
NORMAL_WATERMARK = "0.4"
ALARM_WATERMARK = "0.0000001"


@contextlib.contextmanager
def own_broker(env: Env) -> Iterator[tuple[Env, PrivateRabbit]]:
    """``env`` pointed at a private RabbitMQ node, and the node; stopped afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="outbox-bench-rabbit-") as directory,
        private_rabbit(Path(directory)) as rabbit,
    ):
        yield dataclasses.replace(env, amqp_url=rabbit.url), rabbit


@contextlib.contextmanager
def memory_alarm(rabbit: PrivateRabbit) -> Iterator[None]:
    """``rabbit`` blocks publishers inside the block; the watermark is restored after it."""
    try:
        rabbit.rabbitmqctl("set_vm_memory_high_watermark", ALARM_WATERMARK)
        yield
    finally:
        rabbit.rabbitmqctl("set_vm_memory_high_watermark", NORMAL_WATERMARK)


def run(shared_env: Env, report: Report) -> None:
    burst = shared_env.size(100_000, 5_000)
    blocked_s = 5.0 if shared_env.quick else 20.0
    with (
        own_broker(shared_env) as (env, rabbit),
        outbox_schema(env.database_url) as schema,
        broker_route(env.amqp_url) as route,
        relay_process(env, schema) as process,
        Sampler(process) as sampler,
    ):
        wait_listening(env.database_url, schema)
        rss_idle = process.memory_info().rss / 2**20
        with memory_alarm(rabbit):
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
