"""The consumer guide's flow-control examples (docs/consumer.md), each run as written in
several ``outbox-relay consume`` processes against the real PostgreSQL and RabbitMQ:
tests/support/guide_sms.py (a rate limit), guide_crm.py (a limit per tenant) and
guide_geocode.py (raise RateLimited). Their tables live in the test's schema, which the
processes' database URL puts on the search_path."""

from __future__ import annotations

import contextlib
import importlib
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from outbox_relay.consumer import ConsumerApp
from tests.integration.test_consumer_faults import wait_for_event
from tests.integration.test_rate_limit import assert_rate_held
from tests.support.broker import BrokerHelper
from tests.support.consumer import publish, start_subprocess, stop_subprocess
from tests.support.relay import wait_for

pytestmark = pytest.mark.integration


def on_search_path(database_url: str, schema: str) -> str:
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}options={quote(f'-c search_path={schema}')}"


@contextlib.contextmanager
def guide_processes(
    module: str,
    count: int,
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    **env: str,
) -> Iterator[str]:
    """``count`` processes running the guide module's handlers under the test's names;
    yields the prefix of those names."""
    prefix = broker.name("")
    guide: ConsumerApp = importlib.import_module(module).app
    for handler in guide.handlers:
        route = handler.route
        for name in (route.queue, route.parking, *(tier for tier, _ in route.tiers)):
            broker.track_queue(f"{prefix}{name}")
        broker.track_exchange(f"{prefix}{handler.exchange}")
    environment = {
        "OUTBOX_RELAY_DATABASE_URL": on_search_path(database_url, schema),
        "OUTBOX_RELAY_AMQP_URL": amqp_url,
        "OUTBOX_RELAY_SCHEMA": schema,
        "GUIDE_MODULE": module,
        "GUIDE_PREFIX": prefix,
        **env,
    }
    with contextlib.ExitStack() as stack:
        procs: list[subprocess.Popen[str]] = [
            stack.enter_context(
                start_subprocess(environment, app="tests.support.guide_processes:app")
            )
            for _ in range(count)
        ]
        stack.callback(lambda: [stop_subprocess(proc) for proc in procs])
        for proc in procs:
            wait_for_event(proc, "consumer.consuming")
        yield prefix


def create(database_url: str, schema: str, table: str, columns: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (" + columns + ")").format(sql.Identifier(schema, table))
        )


def select(database_url: str, schema: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(on_search_path(database_url, schema), autocommit=True) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]  # the test's own SQL


def test_the_sms_handler_keeps_to_its_limit_across_three_processes(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    create(database_url, schema, "sms_sent", "order_id int, receipt text, sent_at timestamptz")
    with guide_processes("tests.support.guide_sms", 3, database_url, amqp_url, schema, broker) as p:
        for n in range(80):
            order = json.dumps({"order_id": n, "phone": "+4930123"}).encode()
            publish(broker, f"{p}orders", "order.shipped", order, message_id=f"o-{n}")
        assert wait_for(
            lambda: select(database_url, schema, "SELECT count(*) FROM sms_sent")[0][0] >= 80,
            timeout_s=20,
        )
    rows = select(database_url, schema, "SELECT order_id, sent_at FROM sms_sent ORDER BY sent_at")
    assert sorted(order for order, _ in rows) == list(range(80))
    times = [at.timestamp() for _, at in rows]
    assert_rate_held(times, per_second=20, burst=20)
    assert times[-1] - times[0] >= (80 - 20) / 20 * 0.95


def test_a_busy_tenant_does_not_hold_back_the_others(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    create(database_url, schema, "crm_calls", "tenant text, customer_id int, called_at timestamptz")
    with guide_processes("tests.support.guide_crm", 2, database_url, amqp_url, schema, broker) as p:
        sent = 0
        for tenant, count in (("acme", 30), ("globex", 5), ("initech", 5)):
            for n in range(count):
                body = json.dumps({"customer_id": n}).encode()
                publish(
                    broker,
                    f"{p}customers",
                    "customer.updated",
                    body,
                    message_id=f"{tenant}-{n}",
                    headers={"tenant": tenant},
                )
                sent += 1
        assert wait_for(
            lambda: select(database_url, schema, "SELECT count(*) FROM crm_calls")[0][0] >= sent,
            timeout_s=20,
        )
    rows = select(database_url, schema, "SELECT tenant, called_at FROM crm_calls ORDER BY 2")
    start = rows[0][1].timestamp()
    by_tenant: dict[str, list[float]] = {}
    for tenant, at in rows:
        by_tenant.setdefault(tenant, []).append(at.timestamp())
    # acme's 30 take about 5 s at 5/s; the others' 5 each fit their own burst.
    assert max(by_tenant["globex"]) - start < 2
    assert max(by_tenant["initech"]) - start < 2
    assert_rate_held(by_tenant["acme"], per_second=5, burst=5)
    assert max(by_tenant["acme"]) - start >= (30 - 5) / 5 * 0.95


def test_a_429_pauses_the_geocoder_in_every_process_and_costs_no_attempt(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    create(
        database_url,
        schema,
        "geocoded",
        "customer_id int, lat float8, lon float8, attempt int, at timestamptz",
    )
    busy_until = time.time() + 5  # about two seconds to start, then 429s for three
    with guide_processes(
        "tests.support.guide_geocode",
        3,
        database_url,
        amqp_url,
        schema,
        broker,
        GUIDE_GEOCODER_BUSY_UNTIL=str(busy_until),
    ) as p:
        assert time.time() < busy_until, "the processes took too long to start"
        for n in range(30):
            body = json.dumps({"customer_id": n, "address": f"Street {n}"}).encode()
            publish(broker, f"{p}customers", "address.changed", body, message_id=f"a-{n}")
        assert wait_for(
            lambda: select(database_url, schema, "SELECT count(*) FROM geocoded")[0][0] >= 30,
            timeout_s=20,
        )
        pauses = select(
            database_url, schema, "SELECT paused_until FROM consumer_flow WHERE key = ''"
        )
    rows = select(database_url, schema, "SELECT customer_id, attempt, at FROM geocoded")
    assert sorted(c for c, _, _ in rows) == list(range(30))
    assert {attempt for _, attempt, _ in rows} == {1}  # the 429s counted no attempt
    assert min(at.timestamp() for _, _, at in rows) >= busy_until - 0.2
    assert max(at.timestamp() for _, _, at in rows) < busy_until + 5
    assert len(pauses) == 1
    assert pauses[0][0] == pytest.approx(busy_until, abs=0.5)  # the Retry-After, shared
