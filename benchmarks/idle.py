"""The cost of being ready: CPU and database transactions of an idle relay, next to a
tight poller, each in a database of its own so pg_stat_database counts only its work.

PostgreSQL flushes a backend's statistics about once a second and within 10 s when idle,
so counts are taken over a long window after a warm-up; the lag cancels out in a steady
state. One delayed message goes out during the relay's warm-up: after publishing a
scheduled row the relay must go back to sleep.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Cost:
    cpu_percent: float  # of one core
    tx_per_s: float
    wakeups_per_s: float  # voluntary context switches: the process blocked and woke


def _cpu_and_wakeups(process: psutil.Process) -> tuple[float, int]:
    """CPU seconds of all threads, and voluntary context switches of all threads (psutil's
    num_ctx_switches counts the main thread's only)."""
    switches = 0
    for status in Path(f"/proc/{process.pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                switches += int(line.split()[1])
    return sum(process.cpu_times()[:2]), switches


def cost(env: Env, db_url: str, process: psutil.Process, seconds: float) -> Cost:
    """CPU, transactions and wake-ups of ``process`` over ``seconds``."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    assert isinstance(dbname, str)
    time.sleep(min(5.0, seconds / 3))  # warm-up: connections made, flags raised
    (cpu0, woke0), tx0, t0 = (
        _cpu_and_wakeups(process),
        commits(env.database_url, dbname),
        time.monotonic(),
    )
    time.sleep(seconds)
    (cpu1, woke1), tx1, t1 = (
        _cpu_and_wakeups(process),
        commits(env.database_url, dbname),
        time.monotonic(),
    )
    elapsed = t1 - t0
    return Cost(100 * (cpu1 - cpu0) / elapsed, (tx1 - tx0) / elapsed, (woke1 - woke0) / elapsed)


def floor_cpu(wakeups_per_s: float, seconds: float) -> float:
    """Percent of a core charged to a Python process that does nothing but sleep and wake
    ``wakeups_per_s`` times a second: what waking alone costs on this machine."""
    interval = 1 / max(wakeups_per_s, 0.1)
    code = f"import time\nend = time.monotonic() + {seconds + 2}\n"
    code += f"while time.monotonic() < end:\n    time.sleep({interval})\n"
    with subprocess.Popen([sys.executable, "-c", code]) as child:
        process = psutil.Process(child.pid)
        time.sleep(1)
        cpu0, t0 = _cpu_and_wakeups(process)[0], time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = _cpu_and_wakeups(process)[0], time.monotonic()
        child.kill()
    return 100 * (cpu1 - cpu0) / (t1 - t0)


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
            relay = cost(env, db_url, process, seconds)
    with (
        idle_database(env) as db_url,
        broker_route(env.amqp_url),
        naive.NaiveRelay(db_url, env.amqp_url, SCHEMA, poll_interval_s=TIGHT_POLL_S) as poller,
    ):
        tight = cost(env, db_url, psutil.Process(poller.process.pid), seconds)
    figures = [
        ("idle relay CPU", relay.cpu_percent, tight.cpu_percent, "% of a core", 1.0, "< 1 %"),
        ("idle relay database transactions", relay.tx_per_s, tight.tx_per_s, "tx/s", 2.0, "< 2 /s"),
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
    report.add(
        Figure(
            SCENARIO,
            "idle relay wake-ups",
            round(relay.wakeups_per_s, 1),
            "per s",
            baseline=round(tight.wakeups_per_s, 1),
            extra={"baseline_is": f"poller every {TIGHT_POLL_S * 1000:g} ms"},
        )
    )
    report.add(
        Figure(
            SCENARIO,
            "a process that only sleeps, waking as often as the idle relay",
            round(floor_cpu(relay.wakeups_per_s, seconds), 2),
            "% of a core",
        )
    )
