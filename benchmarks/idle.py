"""The cost of being ready: CPU and database transactions of an idle relay, next to a
tight poller, each in a database of its own so pg_stat_database counts only its work.

PostgreSQL flushes a backend's statistics about once a second and within 10 s when idle,
so counts are taken over a long window after a warm-up; the lag cancels out in a steady
state. One delayed message goes out during the relay's warm-up: after publishing a
scheduled row the relay must go back to sleep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psutil
import psycopg

import outbox_relay
from benchmarks import naive
from benchmarks.common import (
    ROUTING_KEY,
    Env,
    Figure,
    Report,
    broker_route,
    query,
    relay_process,
    scratch_database,
    wait_listening,
)
from outbox_relay.store.schema import migrate

SCENARIO = "idle"
SCHEMA = "outbox"
TIGHT_POLL_S = 0.01


def commits(database_url: str, dbname: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query("xact_commits", SCHEMA), {"dbname": dbname}).fetchone()
    return int(row[0]) if row else 0


def cost(env: Env, db_url: str, process: psutil.Process, seconds: float) -> tuple[float, float]:
    """(percent of one core, transactions per second) over ``seconds``."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    assert isinstance(dbname, str)
    time.sleep(min(5.0, seconds / 3))  # warm-up: connections made, flags raised
    cpu0, tx0, t0 = (
        sum(process.cpu_times()[:2]),
        commits(env.database_url, dbname),
        time.monotonic(),
    )
    time.sleep(seconds)
    cpu1, tx1, t1 = (
        sum(process.cpu_times()[:2]),
        commits(env.database_url, dbname),
        time.monotonic(),
    )
    return 100 * (cpu1 - cpu0) / (t1 - t0), (tx1 - tx0) / (t1 - t0)


@contextlib.contextmanager
def idle_database(env: Env) -> Iterator[str]:
    with scratch_database(env.database_url) as db_url:
        migrate(db_url, schema=SCHEMA)
        yield db_url


def run(env: Env, report: Report) -> None:
    seconds = 6.0 if env.quick else 30.0
    with idle_database(env) as db_url, broker_route(env.amqp_url) as route:
        # Due during the warm-up; the relay learns its time when it raises its flag.
        with psycopg.connect(db_url) as conn:
            outbox_relay.publish(
                conn,
                exchange=route.exchange,
                routing_key=ROUTING_KEY,
                payload={"scheduled": True},
                delay=2.0,
                schema=SCHEMA,
            )
            conn.commit()
        with relay_process(Env(db_url, env.amqp_url, env.quick), SCHEMA) as process:
            wait_listening(db_url, SCHEMA)
            relay_cpu, relay_tx = cost(env, db_url, process, seconds)
    with (
        idle_database(env) as db_url,
        broker_route(env.amqp_url),
        naive.NaiveRelay(db_url, env.amqp_url, SCHEMA, poll_interval_s=TIGHT_POLL_S) as poller,
    ):
        tight_cpu, tight_tx = cost(env, db_url, psutil.Process(poller.process.pid), seconds)
    figures = [
        ("idle relay CPU", relay_cpu, tight_cpu, "% of a core", 1.0, "< 1 %"),
        ("idle relay database transactions", relay_tx, tight_tx, "tx/s", 2.0, "< 2 /s"),
    ]
    for name, value, baseline, unit, limit, target in figures:
        report.add(
            Figure(
                SCENARIO,
                name,
                round(value, 2),
                unit,
                baseline=round(baseline, 1),
                target=target,
                met=value < limit,
                extra={"baseline_is": f"poller every {TIGHT_POLL_S * 1000:g} ms"},
            )
        )
