"""PostgreSQL failover under a running relay: the primary is killed, its streaming standby
promoted, and the relay (its work and LISTEN sessions), the producer and ``migrate`` all
use one libpq multi-host URL with ``target_session_attrs=read-write``.

With a synchronous standby nothing a producer saw committed is lost. With asynchronous
replication the rows the primary committed but had not yet streamed are lost with it:
the test measures them and checks that every lost message is one of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from outbox_relay.cli import main
from outbox_relay.consumer import ConsumerApp, Message
from tests.conftest import unique_name
from tests.faults.conftest import Report
from tests.support.broker import BrokerHelper
from tests.support.consumer import running_consumer
from tests.support.faults import RelayProcess, Tally, pending
from tests.support.private_postgres import PrivatePostgres, private_postgres, private_standby
from tests.support.relay import wait_for
from tests.support.steady_producer import SteadyProducer

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

SYNCHRONOUS = "synchronous_commit = on\nsynchronous_standby_names = 'standby'\n"
# Async: the primary's own default (synchronous_commit off, see private_postgres) adds
# the WAL writer's delay to the streaming lag: the widest window a test can open.
RECOVERY_BOUND_S = 15.0  # from the promotion to the first row published after it


def multi_host_url(*clusters: PrivatePostgres) -> str:
    hosts = ",".join(f"127.0.0.1:{c.port}" for c in clusters)
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"


def _wait_sync(primary: PrivatePostgres, *, sync: bool) -> None:
    wanted = "sync" if sync else "async"
    assert wait_for(
        lambda: primary.sql("SELECT sync_state FROM pg_stat_replication") == wanted,
        timeout_s=20,
        interval_s=0.2,
    ), primary.sql("SELECT * FROM pg_stat_replication")


def _outbox_and_orders(url: str, schema: str) -> tuple[set[int], set[int]]:
    """The orders the (new) primary holds, and the order numbers still in its outbox."""
    with psycopg.connect(url, autocommit=True) as conn:
        orders = conn.execute(
            sql.SQL("SELECT n FROM {}").format(sql.Identifier(schema, "orders"))
        ).fetchall()
        outbox = conn.execute(
            sql.SQL("SELECT (convert_from(payload, 'UTF8')::jsonb->>'n')::int FROM {}").format(
                sql.Identifier(schema, "outbox")
            )
        ).fetchall()
    return {r[0] for r in orders}, {r[0] for r in outbox}


@dataclass
class Failover:
    tally: Tally  # what reached the broker (a plain queue bound to the exchange)
    producer: SteadyProducer
    orders: set[int]  # the orders the promoted standby holds
    effects: list[int]  # the consumer's effects on the promoted standby, in order
    recovered_s: float

    @property
    def not_replicated(self) -> set[int]:
        """Acknowledged commits the promoted standby never received."""
        return set(self.producer.committed) - self.orders

    @property
    def lost_effects(self) -> set[int]:
        """Orders the new primary holds whose effect it does not: the consumer committed
        and acked it on the old primary, and the commit was not replicated."""
        return self.orders - set(self.effects)

    @property
    def duplicate_effects(self) -> int:
        return len(self.effects) - len(set(self.effects))


def _consumer_app(url: str, amqp_url: str, schema: str, exchange: str, queue: str) -> ConsumerApp:
    app = ConsumerApp(
        name=unique_name("failover"), schema=schema, database_url=url, amqp_url=amqp_url
    )
    insert = sql.SQL("INSERT INTO {} (n) VALUES (%s)").format(sql.Identifier(schema, "effects"))

    @app.handler(exchange=exchange, queue=queue, bindings=["#"])
    def on_order(message: Message, tx: psycopg.Connection[Any]) -> None:
        tx.execute(insert, (message.body["n"],))

    return app


def _effects(url: str, schema: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT n FROM {} ORDER BY id").format(sql.Identifier(schema, "effects"))
        ).fetchall()
    return [int(r[0]) for r in rows]


def _failover(
    *,
    synchronous: bool,
    amqp_url: str,
    broker: BrokerHelper,
    tmp_path: Path,
) -> Failover:
    schema = unique_name("t")
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    effects_queue = broker.name("effects")
    with (
        private_postgres(settings=SYNCHRONOUS if synchronous else "") as primary,
        private_standby(primary) as standby,
    ):
        _wait_sync(primary, sync=synchronous)
        url = multi_host_url(primary, standby)
        result = CliRunner().invoke(main, ["migrate", "--database-url", url, "--schema", schema])
        assert result.exit_code == 0, result.output
        SteadyProducer.create_orders(url, schema)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, n int)").format(
                    sql.Identifier(schema, "effects")
                )
            )
        app = _consumer_app(url, amqp_url, schema, exchange, effects_queue)
        producer = SteadyProducer(url, schema, exchange, rate_per_s=300)
        with running_consumer(app, broker):
            producer.start()
            relay = RelayProcess(url, amqp_url, schema, log_dir=tmp_path)
            try:
                assert producer.wait_for(150), producer.last_error
                # The relay is publishing: rows leave the outbox as fast as they come.
                assert wait_for(lambda: pending(url, schema) < 100, timeout_s=20), relay.log_text()
                primary.kill()
                standby.promote()
                promoted_at = time.monotonic()
                written = len(producer.committed)
                assert producer.wait_for(written + 150, timeout_s=30), producer.last_error
                producer.stop()
                assert wait_for(lambda: pending(url, schema) == 0, timeout_s=30), relay.log_text()[
                    -4000:
                ]
                recovered_s = time.monotonic() - promoted_at
                assert relay.alive, relay.log_text()[-4000:]
            finally:
                producer.stop()
                code = relay.stop()
            assert code == 0, relay.log_text()[-4000:]
            orders, _ = _outbox_and_orders(url, schema)
            # The consumer is done once its queue is empty and its effects stop growing.
            assert wait_for(lambda: broker.depth(effects_queue) == 0, timeout_s=30)
            seen: list[int] = []

            def settled() -> bool:
                count = len(_effects(url, schema))
                still = bool(seen) and seen[-1] == count
                seen.append(count)
                return still

            assert wait_for(settled, timeout_s=30, interval_s=0.5)
            effects = _effects(url, schema)
    tally = Tally(expected=set(producer.committed))
    tally.add(broker.collect(queue))
    return Failover(tally, producer, orders, effects, recovered_s)


def test_promotion_with_a_synchronous_standby_loses_nothing(
    amqp_url: str, broker: BrokerHelper, tmp_path: Path, report_fault: Report
) -> None:
    run = _failover(synchronous=True, amqp_url=amqp_url, broker=broker, tmp_path=tmp_path)
    tally = run.tally
    report_fault(
        "PostgreSQL primary killed, sync standby promoted",
        tally,
        duplicate_effects=run.duplicate_effects,
    )
    assert run.not_replicated == set()
    assert tally.lost == set()
    assert tally.invented <= set(run.producer.uncertain)
    assert tally.out_of_order_keys() == []
    assert run.lost_effects == set()
    assert run.duplicate_effects == 0
    assert set(run.effects) >= set(run.producer.committed)
    assert run.recovered_s < RECOVERY_BOUND_S


def test_promotion_with_an_asynchronous_standby_loses_only_unreplicated_commits(
    amqp_url: str, broker: BrokerHelper, tmp_path: Path, report_fault: Report
) -> None:
    run = _failover(synchronous=False, amqp_url=amqp_url, broker=broker, tmp_path=tmp_path)
    tally = run.tally
    phantoms = run.not_replicated & set(tally.numbers)
    report_fault(
        f"PostgreSQL primary killed, async standby promoted ({len(run.not_replicated)} commits "
        f"not replicated, {len(run.lost_effects)} effects lost)",
        tally,
        duplicate_effects=run.duplicate_effects,
        loss_by_design=True,
    )
    print(
        f"async failover: {len(run.producer.committed)} committed, "
        f"{len(run.not_replicated)} not replicated ({len(phantoms)} of them delivered "
        f"anyway), {len(tally.lost)} messages lost, {len(run.lost_effects)} effects lost, "
        f"{tally.duplicates} duplicates, recovered in {run.recovered_s:.1f}s"
    )
    # Every message lost is one whose commit the promoted standby never received.
    assert tally.lost <= run.not_replicated
    assert tally.invented <= set(run.producer.uncertain)
    assert tally.out_of_order_keys() == []
    assert run.duplicate_effects == 0
    assert run.recovered_s < RECOVERY_BOUND_S
