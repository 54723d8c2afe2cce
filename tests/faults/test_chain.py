"""A chain of services, A -> B -> C, through SIGKILLs of every process in it.

A producer thread places orders with ``outbox_relay.publish`` (exchange A); the relay
(``outbox-relay run``) publishes them; consumer B, the guide's example
``docs/examples/invoicing.py`` run by ``outbox-relay consume``, writes an invoice and
publishes ``invoice.created`` through the outbox in the same transaction as its inbox
row (a plain ``def`` handler); the relay publishes that; consumer C
(``tests/support/consumer_app.py``, its ``async def`` handler on an ``AsyncConnection``)
records its effect. Meanwhile the relay, B and C are each SIGKILLed several times at random
moments (a seeded RNG) and restarted. At the end every order has exactly one invoice,
every invoice exactly one downstream message (by message id) and C exactly one effect
for each, and each customer's invoices and C's effects come in order: B and C handle
one message at a time, and the relay keeps each partition key's order.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import outbox_relay
from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.consumer import make_effects_table, subprocess_env, track
from tests.support.faults import CliProcess, ConsumerProcess, RelayProcess, pending
from tests.support.relay import wait_for
from tests.support.scene import FAST_FAILOVER_ARGS
from tests.support.scripts import load_script
from tests.support.service_chain import chain_tally, with_search_path
from tests.support.threads import in_background

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "invoicing.py"
ORDERS = 2_400
ORDERS_PER_TX = 5
PRODUCE_EVERY_S = 0.03  # about 150 orders a second: B keeps up between kills
CUSTOMERS = 20
KILLS_EACH = 4


class Counts:
    """What each stage did so far, read in one snapshot."""

    def __init__(self, database_url: str, schema: str) -> None:
        self._url = database_url
        self._query = sql.SQL(
            "SELECT (SELECT count(*) FROM {invoices}), (SELECT count(*) FROM {effects}),"
            " (SELECT count(*) FROM {outbox})"
        ).format(
            invoices=sql.Identifier(schema, "invoices"),
            effects=sql.Identifier(schema, "effects"),
            outbox=sql.Identifier(schema, "outbox"),
        )
        self.produced = 0  # orders committed by the producer

    def read(self) -> tuple[int, int, int]:
        """(invoices, C's effects, messages the relay published): each invoice's row came
        with one outbox row, so what left the outbox is produced + invoices - pending."""
        produced = self.produced
        with psycopg.connect(self._url, autocommit=True) as conn:
            row = conn.execute(self._query).fetchone()
        assert row is not None
        invoices, effects, left = row
        return invoices, effects, produced + invoices - left


class Stage:
    """One process of the chain, restarted after each kill."""

    def __init__(
        self, name: str, start: Callable[[], CliProcess], progress: Callable[[], int]
    ) -> None:
        self.name, self._start, self._progress = name, start, progress
        self.process = start()
        self.processes = [self.process]
        self.started_at = progress()

    def kill_when_working(self, rng: random.Random) -> bool:
        """SIGKILL at a random moment once this process made progress, then restart it;
        whether it was seen working before the kill."""
        working = wait_for(lambda: self._progress() > self.started_at, timeout_s=15)
        time.sleep(rng.uniform(0.0, 0.3))
        self.process.kill()
        self.process = self._start()
        self.processes.append(self.process)
        self.started_at = self._progress()
        return working

    def stop(self) -> int:
        return self.process.stop()

    def duplicates_skipped(self) -> int:
        """Deliveries the inbox found handled before, by all of this stage's processes."""
        return sum(
            record.get("outcome") == "duplicate"
            for process in self.processes
            for record in process.records()
        )


@pytest.fixture
def stages() -> Iterator[list[Stage]]:
    """The chain's stages; whatever they still run is killed after the test."""
    started: list[Stage] = []
    yield started
    for stage in started:
        for process in stage.processes:
            process.kill()


@pytest.fixture
def invoicing(
    database_url: str, schema: str, broker: BrokerHelper, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """B's environment: the guide's example on this test's exchanges, queue and schema."""
    env = {
        "OUTBOX_RELAY_SCHEMA": schema,
        "INVOICING_ORDERS_EXCHANGE": broker.exchange("orders"),
        "INVOICING_QUEUE": broker.name("invoicing"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    example = load_script(EXAMPLE, "invoicing", monkeypatch)
    track(broker, example.app)
    with psycopg.connect(with_search_path(database_url, schema), autocommit=True) as conn:
        conn.execute(example.INVOICES_TABLE)
    return env


@contextlib.contextmanager
def produce_orders(database_url: str, schema: str, exchange: str, counts: Counts) -> Iterator[None]:
    """Orders through the outbox, ORDERS_PER_TX a transaction, paced, until ORDERS."""
    stop = threading.Event()

    def run() -> None:
        with psycopg.connect(database_url) as conn:
            for first in range(0, ORDERS, ORDERS_PER_TX):
                with conn.transaction():
                    for n in range(first, first + ORDERS_PER_TX):
                        customer = f"c{n % CUSTOMERS}"
                        outbox_relay.publish(
                            conn,
                            exchange=exchange,
                            routing_key="order.created",
                            payload={"order_id": n, "customer": customer},
                            partition_key=customer,
                            schema=schema,
                        )
                counts.produced = first + ORDERS_PER_TX
                if stop.wait(PRODUCE_EVERY_S):
                    return

    with in_background(run, stop.set, name="producer"):
        yield


def test_a_chain_of_services_through_kills_takes_each_effect_and_message_once(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    invoicing: dict[str, str],
    stages: list[Stage],
    tmp_path: Path,
    report_fault: Report,
) -> None:
    # C runs the app's async handler (AsyncConnection), B a plain one: both kinds are killed.
    env_c, invoices_exchange, _queue_c = subprocess_env(
        database_url, amqp_url, schema, broker, TEST_ASYNC_HANDLER="1"
    )
    env_b = {**invoicing, "INVOICING_INVOICES_EXCHANGE": invoices_exchange}
    make_effects_table(database_url, schema)
    counts = Counts(database_url, schema)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    url_b = with_search_path(database_url, schema)

    def consumer(url: str, app: str, env: dict[str, str]) -> Callable[[], CliProcess]:
        return lambda: ConsumerProcess(url, amqp_url, schema, app, log_dir=tmp_path, env=env)

    stages.append(
        Stage("B", consumer(url_b, "docs.examples.invoicing:app", env_b), lambda: counts.read()[0])
    )
    stages.append(
        Stage(
            "C",
            consumer(database_url, "tests.support.consumer_app:app", env_c),
            lambda: counts.read()[1],
        )
    )
    consumers = list(stages)
    # The queues are bound before anything is published: no order is unroutable.
    for stage in consumers:
        process = stage.process
        assert wait_for(lambda p=process: bool(p.events("consumer.consuming")), timeout_s=30), (
            process.log_text()[-3000:]
        )
    stages.append(
        Stage(
            "relay",
            lambda: RelayProcess(
                database_url, amqp_url, schema, *FAST_FAILOVER_ARGS, log_dir=tmp_path
            ),
            lambda: counts.read()[2],
        )
    )
    kills = [stage for stage in stages for _ in range(KILLS_EACH)]
    rng.shuffle(kills)
    hit_working: Counter[str] = Counter()
    with produce_orders(database_url, schema, invoicing["INVOICING_ORDERS_EXCHANGE"], counts):
        for stage in kills:
            hit_working[stage.name] += stage.kill_when_working(rng)
        assert wait_for(lambda: counts.produced == ORDERS, timeout_s=30)
    assert wait_for(lambda: min(counts.read()[:2]) >= ORDERS, timeout_s=30), (
        f"invoices, C's effects: {counts.read()[:2]} of {ORDERS} (seed {seed})"
    )
    time.sleep(1.0)  # late redeliveries and republished rows get their chance to misbehave
    exits = {stage.name: stage.stop() for stage in stages}

    chain = chain_tally(database_url, schema, set(range(ORDERS)))
    orders, handled, downstream, notes = chain.orders, chain.handled, chain.downstream, chain.notes
    delivered_again = sum(stage.duplicates_skipped() for stage in consumers)
    report_fault(
        "SIGKILL of relay, B and C in a chain A -> B -> C",
        handled,
        runs=len(kills),
        duplicates_delivered=delivered_again,
        duplicate_effects=orders.duplicates + handled.duplicates,
    )
    where = f"(seed {seed})"
    assert exits == {"B": 0, "C": 0, "relay": 0}, where
    assert pending(database_url, schema) == 0, where
    # B: one invoice per order, and with it one downstream message id.
    assert not orders.lost, f"orders without an invoice: {sorted(orders.lost)[:10]} {where}"
    assert orders.duplicates == 0, f"orders invoiced twice {where}"
    assert len(downstream) == ORDERS, f"invoices sharing a message id {where}"
    # C: each downstream message took effect once, and no message came from elsewhere.
    assert Counter(chain.effects) == Counter(list(downstream)), (
        f"C's effects by message id differ from the invoices' messages {where}"
    )
    assert notes == {"started async"}, f"C did not run its async handler: {notes} {where}"
    assert orders.out_of_order_keys() == [], f"B invoiced a customer out of order {where}"
    assert handled.out_of_order_keys() == [], f"C saw a customer's invoices out of order {where}"
    assert sum(hit_working.values()) >= len(kills) - 1, (
        f"kills that hit a working process: {dict(hit_working)} {where}"
    )
