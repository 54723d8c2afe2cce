"""Rate limits and RateLimited pauses held across several consumer processes
(``outbox-relay consume tests.support.rate_limit_app:app``), against the real PostgreSQL
and RabbitMQ. Rates are read from the effects' commit times.

Tolerances are for a loaded 2-core machine: an effect commits some time after its token
is due (the worker's pickup, the insert), so a window may hold up to JITTER_S worth of
the rate more than burst + rate x window; the rate under a backlog must not fall far
below the limit either.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from outbox_relay.consumer import ConsumerApp, Message, RateLimited
from outbox_relay.store.deadline import Deadlines
from outbox_relay.store.flow import FlowStore
from tests.integration.test_consumer_faults import wait_for_event
from tests.support.broker import BrokerHelper
from tests.support.consumer import (
    publish,
    running_consumer,
    start_subprocess,
    stop_subprocess,
    subprocess_env,
)
from tests.support.relay import wait_for

pytestmark = pytest.mark.integration

APP = "tests.support.rate_limit_app:app"
JITTER_S = 0.5


def prepare(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in (
            (
                "CREATE TABLE {}.rate_effects (id bigserial PRIMARY KEY, message_id text, "
                "attempt int, tenant text, pid int, at timestamptz)"
            ),
            "CREATE TABLE {}.calls (message_id text, at timestamptz)",
        ):
            conn.execute(sql.SQL(statement).format(sql.Identifier(schema)))


def rows(database_url: str, schema: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(sql.SQL(query).format(sql.Identifier(schema))).fetchall()


def effects(database_url: str, schema: str) -> list[tuple[str, int, str | None, int, float]]:
    """(message_id, attempt, tenant, pid, seconds since the epoch) in commit order."""
    return [
        (m, a, t, p, at.timestamp())
        for m, a, t, p, at in rows(
            database_url,
            schema,
            "SELECT message_id, attempt, tenant, pid, at FROM {}.rate_effects ORDER BY at",
        )
    ]


@contextlib.contextmanager
def consumers(
    count: int, database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, **env: str
) -> Iterator[tuple[list[subprocess.Popen[str]], str]]:
    """``count`` consumer processes of the app, consuming; yields them and the exchange."""
    environment, exchange, _queue = subprocess_env(
        database_url, amqp_url, schema, broker, queue_prefix="limited", **env
    )
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(start_subprocess(environment, app=APP)) for _ in range(count)]
        stack.callback(stop_all, procs)
        for proc in procs:
            wait_for_event(proc, "consumer.consuming")
        yield procs, exchange


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        stop_subprocess(proc)


def most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def assert_rate_held(times: list[float], *, per_second: float, burst: int) -> None:
    """Never above the limit by more than the burst (plus the jitter) in any window, and
    not far below it once the burst is spent."""
    for window_s in (0.25, 0.5, 1.0, 2.0):
        most = most_in_any_window(times, window_s)
        allowed = burst + per_second * (window_s + JITTER_S)
        assert most <= allowed, f"{most} effects in {window_s}s, the limit allows {allowed:.0f}"
    after_burst = sorted(times)[burst:]
    held = (len(after_burst) - 1) / (after_burst[-1] - after_burst[0])
    assert held >= 0.7 * per_second, f"{held:.1f}/s under a backlog, limit {per_second}/s"


def test_a_limit_holds_across_three_consumer_processes(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    prepare(database_url, schema)
    count = 110  # a burst of 10, then 100 at 20/s: about 5 s
    with consumers(3, database_url, amqp_url, schema, broker, TEST_RATE_LIMIT="20/s") as (
        _procs,
        exchange,
    ):
        for n in range(count):
            publish(broker, exchange, "k", b"{}", message_id=f"m-{n}")
        assert wait_for(lambda: len(effects(database_url, schema)) >= count, timeout_s=25)

    done = effects(database_url, schema)
    assert sorted(m for m, *_ in done) == sorted(f"m-{n}" for n in range(count))
    assert len({pid for *_, pid, _ in done}) == 3  # every process took its share
    times = [at for *_, at in done]
    assert_rate_held(times, per_second=20, burst=20)
    # 20/s means a burst of at most 20, then one every 50 ms: no faster than that overall.
    assert times[-1] - times[0] >= (count - 20) / 20 * 0.95


def test_each_key_has_its_own_bucket(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """A noisy tenant's backlog waits for its own tokens; a quiet tenant's messages go
    through at once beside it (within the processes' prefetch)."""
    prepare(database_url, schema)
    with consumers(
        2,
        database_url,
        amqp_url,
        schema,
        broker,
        TEST_RATE_LIMIT="10/s",
        TEST_RATE_KEY="header:tenant",
        TEST_PREFETCH_MULTIPLIER="20",  # 2 x 40 deliveries held: room for both tenants
    ) as (_procs, exchange):
        for n in range(60):
            publish(broker, exchange, "k", b"{}", message_id=f"noisy-{n}", headers={"tenant": "a"})
        for n in range(10):
            publish(broker, exchange, "k", b"{}", message_id=f"quiet-{n}", headers={"tenant": "b"})
        for n in range(5):
            publish(broker, exchange, "k", b"{}", message_id=f"none-{n}")
        assert wait_for(lambda: len(effects(database_url, schema)) >= 75, timeout_s=25)

    done = effects(database_url, schema)
    start = done[0][-1]
    by_tenant: dict[str | None, list[float]] = {}
    for _m, _a, tenant, _p, at in done:
        by_tenant.setdefault(tenant, []).append(at)
    assert sorted(len(v) for v in by_tenant.values()) == [5, 10, 60]
    # The quiet tenant's ten fit its burst, and the keyless ones their default bucket's:
    # neither waits for the noisy tenant, whose 60 take about 5 s.
    assert max(by_tenant["b"]) - start < 2.5
    assert max(by_tenant[None]) - start < 2.5
    assert_rate_held(by_tenant["a"], per_second=10, burst=10)
    assert max(by_tenant["a"]) - start >= (60 - 10) / 10 * 0.95


@pytest.mark.parametrize("limit", ["1000/s", ""], ids=["limited", "unlimited"])
def test_rate_limited_pauses_every_process_without_counting_an_attempt(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, limit: str
) -> None:
    prepare(database_url, schema)
    pause_s = 3.0
    with consumers(3, database_url, amqp_url, schema, broker, TEST_RATE_LIMIT=limit) as (
        _procs,
        exchange,
    ):
        publish(broker, exchange, "k", json.dumps({"say_429": pause_s}).encode(), message_id="429")
        assert wait_for(lambda: rows(database_url, schema, "SELECT 1 FROM {}.calls"), timeout_s=10)
        for n in range(30):
            publish(broker, exchange, "k", b"{}", message_id=f"m-{n}")
        assert wait_for(lambda: len(effects(database_url, schema)) >= 31, timeout_s=20)

    said_429 = rows(database_url, schema, "SELECT at FROM {}.calls ORDER BY at")
    assert len(said_429) == 2  # raised once, then handled once after the pause: no storm
    paused_at = said_429[0][0].timestamp()
    done = effects(database_url, schema)
    assert sorted(m for m, *_ in done) == sorted(["429", *(f"m-{n}" for n in range(30))])
    assert {attempt for _m, attempt, *_ in done} == {1}  # the pause counted no attempt
    first = min(at for *_, at in done)
    assert first >= paused_at + pause_s - 0.2, f"an effect {first - paused_at:.2f}s into the pause"
    assert len({pid for *_, pid, _ in done}) >= 2
    assert max(at for *_, at in done) - paused_at < pause_s + 5


def test_sigterm_returns_deliveries_waiting_for_a_token_at_once(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    prepare(database_url, schema)
    with consumers(1, database_url, amqp_url, schema, broker, TEST_RATE_LIMIT="1/h") as (
        procs,
        exchange,
    ):
        for n in range(8):
            publish(broker, exchange, "k", b"{}", message_id=f"m-{n}")
        assert wait_for(lambda: len(effects(database_url, schema)) == 1, timeout_s=10)
        queue = broker.name("limited")
        # Prefetch 4 (concurrency 2 x 2): one handled, four held for a token, three ready.
        assert wait_for(lambda: broker.depth(queue) == 3)
        proc = procs[0]
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        drained = wait_for_event(proc, "consumer.drained")
        assert proc.wait(10) == 0
        took_s = time.monotonic() - asked

    assert drained["returned"] == 4
    assert took_s < 5
    assert len(effects(database_url, schema)) == 1
    assert broker.depth(queue) == 7  # nothing lost: the held four are back


def test_a_killed_consumer_loses_none_of_the_deliveries_it_held_for_tokens(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """SIGKILL while a process holds deliveries unacked for their tokens: the broker gives
    them back, and a new process handles every message exactly once."""
    prepare(database_url, schema)
    count = 30  # a burst of 5, then 5/s: the kill comes with about 20 held
    env, exchange, queue = subprocess_env(
        database_url,
        amqp_url,
        schema,
        broker,
        queue_prefix="limited",
        TEST_RATE_LIMIT="5/s",
        TEST_PREFETCH_MULTIPLIER="10",  # concurrency 2 x 10: up to 20 held for tokens
    )
    with start_subprocess(env, app=APP) as doomed:
        try:
            wait_for_event(doomed, "consumer.consuming")
            for n in range(count):
                publish(broker, exchange, "k", b"{}", message_id=f"m-{n}")
            assert wait_for(lambda: len(effects(database_url, schema)) >= 7, timeout_s=10)
            held = count - len(effects(database_url, schema)) - broker.depth(queue)
            assert held >= 10, f"only {held} deliveries held when the process was killed"
            doomed.kill()
            assert doomed.wait(10) == -signal.SIGKILL
        finally:
            if doomed.poll() is None:
                doomed.kill()
    done_before = len(effects(database_url, schema))
    assert done_before < count - 10
    # Never acked, so back in the queue (with the one whose transaction died, if any).
    assert wait_for(lambda: broker.depth(queue) >= count - done_before, timeout_s=10)

    with start_subprocess(env, app=APP) as successor:
        try:
            wait_for_event(successor, "consumer.consuming")
            assert wait_for(lambda: len(effects(database_url, schema)) >= count, timeout_s=15)
            assert wait_for(lambda: broker.depth(queue) == 0)
        finally:
            assert stop_subprocess(successor) == 0

    done = effects(database_url, schema)
    assert sorted(m for m, *_ in done) == sorted(f"m-{n}" for n in range(count))  # once each
    assert {attempt for _m, attempt, *_ in done} == {1}  # a kill costs no attempt
    assert len({pid for *_, pid, _ in done}) == 2


def test_readiness_shows_each_limit_the_rate_held_and_a_pause(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    app = ConsumerApp(
        name="status-test", schema=schema, database_url=database_url, amqp_url=amqp_url
    )
    exchange = broker.exchange()

    @app.handler(exchange=exchange, queue=broker.name("mail"), rate_limit="5/s")
    def send_mail(message: Message, tx: psycopg.Connection[Any]) -> None:
        if message.body.get("429"):
            raise RateLimited(retry_after=30)

    with running_consumer(app, broker) as runner:
        for n in range(3):
            publish(broker, exchange, "k", b"{}", message_id=f"m-{n}")
        assert wait_for(lambda: "held 0.3/s here" in runner.readiness()[1])
        ready, text = runner.readiness()
        assert ready
        assert "send_mail: limit 5/s, held 0.3/s here" in text
        publish(broker, exchange, "k", b'{"429": true}', message_id="slow-down")
        assert wait_for(lambda: "paused for" in runner.readiness()[1])
        assert "1 waiting for a token or a pause" in runner.readiness()[1]
    assert broker.depth(broker.name("mail")) == 1  # back in the queue on stop, unhandled


def test_a_rate_limit_on_a_schema_without_migration_0010_ends_the_start_with_the_fix(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "consumer_flow")))
    env, _exchange, _queue = subprocess_env(
        database_url, amqp_url, schema, broker, queue_prefix="limited", TEST_RATE_LIMIT="5/s"
    )
    with start_subprocess(env, app=APP) as proc:
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert f"{schema}.consumer_flow" in err
    assert "outbox-relay migrate" in err


def test_a_nan_pause_left_in_the_table_pauses_nothing(database_url: str, schema: str) -> None:
    """Versions before RateLimited refused retry_after=nan wrote NaN, which PostgreSQL
    orders after every time: a pause that never ends. The statements ignore it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (consumer, key, paused_until) VALUES ('app:q', '', 'NaN')"
            ).format(sql.Identifier(schema, "consumer_flow"))
        )
    store = FlowStore(
        url=database_url,
        schema=schema,
        application_name="nan test",
        deadlines=Deadlines(timeout_s=0),
    )
    try:
        assert store.paused(["app:q"]) == {}
        lease = store.lease(consumer="app:q", key="", count=1, span_s=0.1)
        assert lease.granted
        assert lease.start_s == pytest.approx(0, abs=0.5)
        assert store.pause(consumer="app:q", seconds=5) == pytest.approx(5, abs=0.5)
        assert 4 < store.paused(["app:q"])["app:q"] <= 5
        assert not store.lease(consumer="app:q", key="", count=1, span_s=0.1).granted
        with pytest.raises(ValueError, match="finite number of seconds above 0"):
            store.pause(consumer="app:q", seconds=float("nan"))
    finally:
        store.close()


def test_a_raised_limit_does_not_wait_out_the_old_period(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    """The bucket of "1/h" is an hour ahead after one message; the same handler restarted
    with "50/s" starts a bucket of its own instead of waiting for that hour."""
    exchange, queue = broker.exchange(), broker.name("raised")
    handled: list[str] = []

    def app_with(limit: str) -> ConsumerApp:
        app = ConsumerApp(
            name="raised-test", schema=schema, database_url=database_url, amqp_url=amqp_url
        )

        @app.handler(exchange=exchange, queue=queue, rate_limit=limit)
        def sync_crm(message: Message, tx: psycopg.Connection[Any]) -> None:
            handled.append(message.message_id)

        return app

    with running_consumer(app_with("1/h"), broker):
        publish(broker, exchange, "k", b"{}", message_id="first")
        assert wait_for(lambda: handled == ["first"], timeout_s=10)
    with running_consumer(app_with("50/s"), broker):
        for n in range(5):
            publish(broker, exchange, "k", b"{}", message_id=f"after-{n}")
        assert wait_for(lambda: len(handled) == 6, timeout_s=10), handled
