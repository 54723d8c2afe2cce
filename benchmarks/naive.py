"""The baseline: a relay as commonly written.

Poll every second; take some rows; publish each with a synchronous confirm (pika's
``BlockingChannel.confirm_delivery``), delete it; commit. With a short poll interval the
same loop is the "tight poller" the idle cost is compared with.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from typing import Any

import pika
import psycopg

from benchmarks.common import query

NAIVE_BATCH = 100


def run(
    database_url: str,
    amqp_url: str,
    schema: str,
    *,
    poll_interval_s: float,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """Relay until ``stop`` is set; sleeps ``poll_interval_s`` whenever a poll finds nothing."""
    amqp = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = amqp.channel()
    channel.confirm_delivery()
    claim, delete = query("naive_claim", schema), query("naive_delete", schema)
    with psycopg.connect(database_url) as conn:
        while not stop.is_set():
            rows = conn.execute(claim, {"limit": NAIVE_BATCH}).fetchall()
            for row_id, message_id, exchange, routing_key, body, content_type in rows:
                channel.basic_publish(
                    exchange,
                    routing_key,
                    body,
                    pika.BasicProperties(
                        content_type=content_type,
                        delivery_mode=2,
                        message_id=str(message_id),
                        timestamp=int(time.time()),
                    ),
                    mandatory=True,
                )
                conn.execute(delete, {"id": row_id})
            conn.commit()
            if not rows:
                amqp.sleep(poll_interval_s)
    amqp.close()


class NaiveRelay:
    """The naive relay in a child process (so its CPU can be measured on its own)."""

    def __init__(self, database_url: str, amqp_url: str, schema: str, *, poll_interval_s: float):
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self.process: Any = context.Process(
            target=run,
            args=(database_url, amqp_url, schema),
            kwargs={"poll_interval_s": poll_interval_s, "stop": self._stop},
            daemon=True,
        )

    def __enter__(self) -> NaiveRelay:
        self.process.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
