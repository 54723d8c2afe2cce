"""Running the real relay in a background thread of the test process."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.publisher import Publisher
from outbox_relay.relay import (
    LEASE_TTL_S,
    BatchResult,
    Relay,
    RelayObserver,
    RelaySettings,
    new_relay_id,
)
from outbox_relay.store.relay_store import PostgresStore
from tests.support.threads import in_background


def make_relay(
    database_url: str,
    amqp_url: str,
    schema: str,
    *,
    order_gate: bool = False,
    order_gate_max_wait_s: float = 30.0,
    observer: RelayObserver | None = None,
    publisher_type: Callable[..., Publisher] = Publisher,
    random_unit: Callable[[], float] = random.random,
    **settings: Any,
) -> Relay:
    relay: Relay | None = None
    publisher = publisher_type(
        url=amqp_url, should_stop=lambda: relay is not None and relay.stopping
    )
    relay = Relay(
        store=PostgresStore(
            url=database_url,
            schema=schema,
            relay_id=new_relay_id(),
            lease_ttl_s=settings.get("lease_ttl_s", LEASE_TTL_S),
            order_gate=order_gate,
            order_gate_max_wait_s=order_gate_max_wait_s,
        ),
        publisher=publisher,
        settings=RelaySettings(**settings),
        observer=observer,
        random_unit=random_unit,
    )
    return relay


def one_batch(database_url: str, amqp_url: str, schema: str) -> BatchResult:
    """A relay that connects, takes its partitions, runs one batch and shuts down."""
    with make_relay(database_url, amqp_url, schema) as relay:
        return relay.run_batch()


@contextlib.contextmanager
def running_relay(
    database_url: str, amqp_url: str, schema: str, **settings: Any
) -> Iterator[Relay]:
    relay = make_relay(database_url, amqp_url, schema, **settings)
    with in_background(relay.run, relay.stop, name="relay"):
        yield relay


def outbox_rows(database_url: str, schema: str, columns: str = "id") -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        query = sql.SQL("SELECT " + columns + " FROM {}.outbox ORDER BY id").format(
            sql.Identifier(schema)
        )
        return conn.execute(query).fetchall()


def wait_for(
    condition: Callable[[], bool], *, timeout_s: float = 20.0, interval_s: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()
