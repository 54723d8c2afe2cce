"""Rate limits of consumer handlers: the rate held across processes, what limiting costs
the database, and what the feature costs a handler without a limit. Part of ``python -m
benchmarks all``; alone::

    python -m benchmarks.rate_limit [--seconds S] [--messages N] [--runs R]

- held: three ``outbox-relay consume`` processes of ``benchmarks/rate_limit_app.py``, the
  handler limited to 50/s (and to 2,000/s), a backlog of ``S`` seconds' worth at the
  limit plus the burst. The rate is read from the rows' write times: after the burst,
  within 5 % of the limit, and in no window more than the burst above rate x window.
  Round trips per message: the leases, counted as the writes PostgreSQL recorded on the
  run's own ``consumer_flow`` table (each lease is one upsert). CPU: the three
  processes' user + system time per message.
- no limit: the same in-process handler (one INSERT, concurrency 4) draining a backlog
  of ``N`` with the consumer as shipped (pauses shared through the database) and with
  ``Runner(share_pauses=False)``, whose deliveries of a handler without a limit go
  straight to the worker pool without a word to the database about pauses (what the
  runner did before rate limits), alternating, ``R`` rounds; the median of the paired
  rounds' ratios, and how many deliveries waited in the gate instead of starting as
  they arrived (with shared pauses, the first prefetch: it waits for the one pause
  query). Beside it, this process's CPU per message (the runner's threads from start to
  stop), whose paired ratio the machine's other work moves less than the wall clock.

``--part no-limit`` (or ``held``) runs one part alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
from psycopg import sql

from benchmarks.common import HERE, Env, Figure, Report, Rounds, outbox_schema, ratio_target, unique
from benchmarks.consumer import Countdown, backlog, effects_table, names, timed_drain
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.declare import declare
from outbox_relay.consumer.runner import Runner
from outbox_relay.logs import configure_logging

SCENARIO = "rate_limit"
PROCESSES = 3
HELD_TOLERANCE = 0.05
NO_LIMIT_TARGET_RATIO = 0.97
WINDOWS_S = (0.5, 1.0, 2.0, 5.0)
WITH_GATE, WITHOUT_GATE = "with the flow gate", "bare pass-through"
PARTS = ("all", "held", "no-limit")


# -- held across processes ----------------------------------------------------------------


@contextlib.contextmanager
def consumers(
    env: Env, schema: str, *, exchange: str, queue: str, table: str, limit: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    environment = {
        **os.environ,
        "OUTBOX_RELAY_DATABASE_URL": env.database_url,
        "OUTBOX_RELAY_AMQP_URL": env.amqp_url,
        "OUTBOX_RELAY_SCHEMA": schema,
        "BENCH_EXCHANGE": exchange,
        "BENCH_QUEUE": queue,
        "BENCH_TABLE": table,
        "BENCH_RATE_LIMIT": limit,
    }
    command = [sys.executable, "-m", "outbox_relay", "consume", "benchmarks.rate_limit_app:app"]
    procs = [
        subprocess.Popen(
            [*command, "--log-level", "warning"],
            cwd=HERE.parent,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(PROCESSES)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def write_times(database_url: str, table: sql.Identifier) -> list[float]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT extract(epoch FROM at)::float8 FROM {} ORDER BY at").format(table)
        ).fetchall()
    return [r[0] for r in rows]


def flow_writes(database_url: str, schema: str) -> int:
    """Upserts PostgreSQL counted on the schema's consumer_flow (one per lease)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = 'consumer_flow'",
            [schema],
        ).fetchone()
    return int(row[0]) if row else 0


def most_above_rate(times: list[float], per_second: float) -> float:
    """The largest count in any window [t, t + w) of WINDOWS_S less rate x window."""
    worst = 0.0
    for window in WINDOWS_S:
        first = 0
        for last, at in enumerate(times):
            while at - times[first] >= window:
                first += 1
            worst = max(worst, (last - first + 1) - per_second * window)
    return worst


def declaration_only(message: Message) -> None:
    """Never runs: its app only declares the queue the consumer processes will consume."""
    del message


def held(env: Env, report: Report, schema: str, *, per_second: int, seconds: float) -> None:
    """Three processes draining a backlog of ``seconds`` at ``per_second`` plus the burst."""
    count = per_second + round(per_second * seconds)
    exchange, queue = names()
    table = unique("rated")
    ident = sql.Identifier(schema, table)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (message_id text NOT NULL, at timestamptz NOT NULL)").format(
                ident
            )
        )
    writes_before = flow_writes(env.database_url, schema)
    # The backlog is in the queue before the consumers start: the same queue (and tiers)
    # the app declares, filled with confirms.
    declared = ConsumerApp(name="bench-rate", schema=schema)
    declared.handler(exchange=exchange, queue=queue, retry_delays=[1], declare_exchange=False)(
        declaration_only
    )
    cpu_s = 0.0
    try:
        with (
            backlog(
                env,
                exchange,
                queue,
                count,
                declare_queue=lambda: declare(env.amqp_url, declared.handlers),
            ),
            consumers(
                env, schema, exchange=exchange, queue=queue, table=table, limit=f"{per_second}/s"
            ) as procs,
        ):
            deadline = time.monotonic() + 3 * seconds + 60
            while len(write_times(env.database_url, ident)) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError("the rate-limited backlog was not drained in time")
                time.sleep(0.5)
            for proc in procs:
                cpu = psutil.Process(proc.pid).cpu_times()
                cpu_s += cpu.user + cpu.system
        times = write_times(env.database_url, ident)
    finally:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    time.sleep(1.0)  # the ended backends' statistics reach the shared counters
    round_trips = flow_writes(env.database_url, schema) - writes_before
    after_burst = times[per_second:]
    rate = (len(after_burst) - 1) / (after_burst[-1] - after_burst[0])
    ratio = rate / per_second
    label = f"{per_second}/s, {PROCESSES} processes, {count} messages"
    report.add(
        Figure(
            SCENARIO,
            f"rate held after the burst / limit, {label}",
            round(ratio, 3),
            "x",
            target=f"within {HELD_TOLERANCE:.0%} of the limit",
            met=abs(ratio - 1) <= HELD_TOLERANCE,
            extra={"rate": round(rate, 1), "span_s": round(times[-1] - times[0], 2)},
        )
    )
    excess = most_above_rate(times, per_second)
    report.add(
        Figure(
            SCENARIO,
            f"most above rate x window (windows {WINDOWS_S} s), {label}",
            round(excess, 1),
            "messages",
            target=f"<= the burst ({per_second})",
            met=excess <= per_second,
        )
    )
    report.add(
        Figure(
            SCENARIO,
            f"database round trips per message, {label}",
            round(round_trips / count, 3),
            "",
        )
    )
    report.add(
        Figure(
            SCENARIO,
            f"consumer CPU per message (3 processes, user + system), {label}",
            round(cpu_s / count * 1000, 3),
            "ms",
            extra={
                "cores_busy": round(cpu_s / (times[-1] - times[0]), 3),
                "note": "includes the processes' idle ticking over the whole run",
            },
        )
    )


# -- no limit: the feature's cost -----------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    rate: float  # messages a second, from consuming to the last commit
    cpu_ms: float  # this process's CPU per message, from the runner's start to its stop
    waited: int  # deliveries that waited in the flow gate instead of starting on arrival


def drain_rate(env: Env, schema: str, insert: sql.Composed, count: int, *, gate: bool) -> Drain:
    exchange, queue = names()
    app = ConsumerApp(
        name=unique("bench"),
        schema=schema,
        database_url=env.database_url,
        amqp_url=env.amqp_url,
        concurrency=4,
    )
    countdown = Countdown(count)

    @app.handler(exchange=exchange, queue=queue, retry_delays=[1], declare_exchange=False)
    def handler(message: Message, tx: psycopg.Connection[Any]) -> None:
        tx.execute(insert, (message.message_id, message.body["order"]))

    app.after_commit(lambda _message: countdown.one())
    with backlog(
        env, exchange, queue, count, declare_queue=lambda: declare(env.amqp_url, app.handlers)
    ):
        # Without shared pauses: what the runner did before rate limits, each delivery of
        # a handler without a limit straight to the pool, no pause round trips.
        runner = Runner(app, app.settings(), share_pauses=gate)
        cpu_s = time.process_time()
        rate = timed_drain(runner, countdown, count)
        cpu_s = time.process_time() - cpu_s
        return Drain(rate, cpu_s / count * 1000, runner.deliveries_waited)


def no_limit(env: Env, report: Report, schema: str, *, messages: int, runs: int) -> None:
    measured = Rounds()
    cases = (WITH_GATE, WITHOUT_GATE)
    drains: dict[str, list[Drain]] = {case: [] for case in cases}
    # One drain unmeasured first: the first measured case otherwise also pays for warming
    # the broker, the database's caches and the imports (it was the slower one in most
    # pairs, whichever it was).
    with effects_table(env.database_url, schema) as effects:
        drain_rate(env, schema, effects.insert, max(1, messages // 5), gate=True)
    for round_no in range(runs):
        measured.round = round_no
        for case in cases[round_no % 2 :] + cases[: round_no % 2]:
            with effects_table(env.database_url, schema) as effects:
                drain = drain_rate(env, schema, effects.insert, messages, gate=case == WITH_GATE)
                measured.add(case, drain.rate)
                drains[case].append(drain)
                effects.check(messages)
    for case in cases:
        samples = [round(r) for r in measured.rates[case]]
        report.add(
            Figure(
                SCENARIO,
                f"no limit set, concurrency 4, {messages} messages: {case}",
                round(statistics.median(samples)),
                "msg/s",
                extra={
                    "samples": samples,
                    "cpu_ms_per_message": [round(d.cpu_ms, 3) for d in drains[case]],
                    "waited_in_gate": [d.waited for d in drains[case]],
                },
            )
        )
    # CPU is less at the mercy of the machine's other work than the wall clock.
    cpu_ratios = [
        round(ours.cpu_ms / theirs.cpu_ms, 3)
        for ours, theirs in zip(drains[WITH_GATE], drains[WITHOUT_GATE], strict=True)
    ]
    report.add(
        Figure(
            SCENARIO,
            "no limit set, this process's CPU per message: with the flow gate / bare pass-through",
            round(statistics.median(cpu_ratios), 3),
            "x",
            extra={"run_ratios": cpu_ratios},
        )
    )
    report.add(
        ratio_target(
            SCENARIO,
            "no limit set: with the flow gate / bare pass-through",
            measured.ratio(WITH_GATE, WITHOUT_GATE),
            at_least=NO_LIMIT_TARGET_RATIO,
            against=WITHOUT_GATE,
            extra={"run_ratios": measured.ratios(WITH_GATE, WITHOUT_GATE)},
        )
    )


def run(
    env: Env,
    report: Report,
    *,
    seconds: float | None = None,
    messages: int | None = None,
    runs: int | None = None,
    part: str = "all",
) -> None:
    seconds = seconds or env.size(60, 4)
    with outbox_schema(env.database_url) as schema:
        if part in ("all", "held"):
            held(env, report, schema, per_second=50, seconds=seconds)
            high = env.size(2000, 500)  # a smoke run keeps the backlog small
            held(env, report, schema, per_second=high, seconds=env.size(max(2.0, seconds / 10), 1))
        if part not in ("all", "no-limit"):
            return
        no_limit(
            env,
            report,
            schema,
            messages=messages or env.size(10_000, 500),
            runs=runs or env.size(3, 1),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", choices=PARTS, default="all", help="run one part alone")
    args = parser.parse_args()
    configure_logging(level="warning", fmt="json")  # per-message events would dominate
    report = Report()
    run(
        Env.from_environment(quick=False),
        report,
        seconds=args.seconds,
        messages=args.messages,
        runs=args.runs,
        part=args.part,
    )
    print()
    print(report.table())


if __name__ == "__main__":
    main()
