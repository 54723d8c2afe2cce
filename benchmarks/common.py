"""Shared helpers of the benchmark scripts: services, isolated names, the relay process,
measurements, and how figures are reported.

Every scenario creates its own schema and its own exchange and queue and removes them at
the end, so the local services are left as they were found.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import psutil
import psycopg
from psycopg import sql

import outbox_relay
from outbox_relay.store.schema import migrate
from outbox_relay.store.sqlfiles import compose
from outbox_relay.topology.broker import server_version

DATABASE_ENV = "OUTBOX_RELAY_BENCH_DATABASE_URL"
AMQP_ENV = "OUTBOX_RELAY_BENCH_AMQP_URL"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
PAYLOAD_BYTES = 512
ROUTING_KEY = "bench.created"
FILL_CHUNK = 5000
HERE = Path(__file__).resolve().parent
_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Env:
    database_url: str
    amqp_url: str
    quick: bool
    # Another checkout's source tree to run ``outbox-relay run`` from (an A/B run).
    relay_source: Path | None = None

    @classmethod
    def from_environment(cls, *, quick: bool) -> Env:
        return cls(
            database_url=os.environ.get(DATABASE_ENV, DEFAULT_DATABASE_URL),
            amqp_url=os.environ.get(AMQP_ENV, DEFAULT_AMQP_URL),
            quick=quick,
        )

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


# -- reporting ----------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure, with the same-run ceiling or baseline it is judged against."""

    scenario: str
    name: str
    value: float
    unit: str
    ceiling: float | None = None
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        data.update(self.extra)
        return json.dumps(data, default=str)


class Report:
    """Collects figures; prints each as a JSON line the moment it is measured."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.as_json(), flush=True)
        return figure

    def table(self) -> str:
        lines = [
            "| scenario | figure | value | ceiling | baseline | target | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in self.figures:
            met = "" if f.met is None else ("yes" if f.met else "**no**")
            lines.append(
                f"| {f.scenario} | {f.name} | {fmt(f.value)} {f.unit} | {fmt(f.ceiling)} | "
                f"{fmt(f.baseline)} | {f.target} | {met} |"
            )
        return "\n".join(lines)


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ratio_target(
    scenario: str,
    name: str,
    ratio: float,
    *,
    at_least: float,
    against: str,
    extra: dict[str, Any] | None = None,
) -> Figure:
    """A ratio measured already (the median of paired runs' ratios), checked against a
    target."""
    return Figure(
        scenario,
        name,
        round(ratio, 3),
        "x",
        target=f">= {at_least} x {against}",
        met=ratio >= at_least,
        extra=extra or {},
    )


class Rounds:
    """Each case's rate in every round, and notes per round. Ratios are taken within a
    round and their median reported: the machine's speed drifts between rounds more than
    the cases differ."""

    def __init__(self) -> None:
        self.round = 0
        self.rates: dict[str, list[float]] = {}
        self.notes: dict[str, dict[int, float]] = {}
        self.units: dict[str, str] = {}

    def add(self, case: str, rate: float) -> None:
        self.rates.setdefault(case, []).append(rate)

    def note(self, name: str, value: float | None, unit: str) -> None:
        """Keeps ``value`` for this round; a value that could not be measured is left out."""
        self.units[name] = unit
        if value is not None:
            self.notes.setdefault(name, {})[self.round] = value

    def ratios(self, case: str, ceiling: str) -> list[float]:
        return [round(a / b, 3) for a, b in zip(self.rates[case], self.rates[ceiling], strict=True)]

    def ratio(self, case: str, ceiling: str) -> float:
        return statistics.median(self.ratios(case, ceiling))

    def note_ratio(self, name: str, reference: str) -> float | None:
        """The median over the rounds where both notes were measured."""
        ours, theirs = self.notes.get(name, {}), self.notes.get(reference, {})
        pairs = [ours[r] / theirs[r] for r in ours.keys() & theirs.keys() if theirs[r]]
        return round(statistics.median(pairs), 3) if pairs else None


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.1f} GiB RAM, Python {sys.version.split()[0]}"


def services(env: Env) -> str:
    """The servers' versions and the PostgreSQL settings the figures depend on (without
    autovacuum the outbox keeps every deleted row for the whole run); what could not be
    read says why, and the scenarios then report their own failures."""
    try:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            row = conn.execute(query("server_settings", "public")).fetchone()
        assert row is not None
        database = f"PostgreSQL {row[0]} (autovacuum {row[1]}, synchronous_commit {row[2]})"
    except psycopg.Error as exc:
        database = f"PostgreSQL not read: {' '.join(str(exc).split())} (the URL: {DATABASE_ENV})"
    try:
        connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        try:
            broker = "RabbitMQ " + ".".join(map(str, server_version(connection)))
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
    except pika.exceptions.AMQPError as exc:
        broker = f"RabbitMQ not read: {exc!r} (the URL: {AMQP_ENV})"
    return f"{database}, {broker}"


# -- SQL of the benchmarks ----------------------------------------------------------------


def bench_queries() -> dict[str, str]:
    """Named blocks of ``benchmarks/queries.sql`` (templates with ``{schema}``)."""
    text = (HERE / "queries.sql").read_text(encoding="utf-8")
    parts = _NAME_RE.split(text)
    return {
        name: "\n".join(
            line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
        )
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def query(name: str, schema: str) -> sql.Composed:
    return compose(bench_queries()[name], schema=schema)


# -- isolated services --------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def outbox_schema(database_url: str) -> Iterator[str]:
    """A fresh schema with the outbox migrated into it; dropped afterwards."""
    schema = unique("bench")
    migrate(database_url, schema=schema)
    try:
        yield schema
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """A database of its own, so pg_stat_database counts only what runs in it."""
    name = unique("outbox_bench")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(database_url, dbname=name)
    try:
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass(frozen=True)
class Route:
    exchange: str
    queue: str


@contextlib.contextmanager
def broker_route(amqp_url: str, **queue_arguments: Any) -> Iterator[Route]:
    """A durable topic exchange and a durable queue bound to it; deleted afterwards."""
    name = unique("bench")
    route = Route(exchange=f"{name}.ex", queue=f"{name}.q")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    channel.exchange_declare(route.exchange, "topic", durable=True)
    channel.queue_declare(route.queue, durable=True, arguments=queue_arguments or None)
    channel.queue_bind(route.queue, route.exchange, routing_key="#")
    conn.close()
    try:
        yield route
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = conn.channel()
        channel.queue_delete(route.queue)
        channel.exchange_delete(route.exchange)
        conn.close()


def queue_depth(amqp_url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def check_delivered(delivered: int, count: int) -> None:
    """Nothing lost. More is allowed: a cut connection republishes the batch in flight."""
    if delivered < count:
        raise AssertionError(f"only {delivered} of {count} messages reached the queue")
    if delivered > count:
        print(f"note: {delivered - count} duplicates (a connection was cut)", flush=True)


def purge(amqp_url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        conn.channel().queue_purge(queue)
    finally:
        conn.close()


# -- the outbox ---------------------------------------------------------------------------


def payload(size: int = PAYLOAD_BYTES, *, seq: int = 0) -> bytes:
    head = f"{seq:012d}".encode()
    return head + b"x" * (size - len(head))


def fill(
    conn: psycopg.Connection[Any],
    schema: str,
    exchange: str,
    count: int,
    *,
    size: int,
    keys: int | None = None,
) -> None:
    """Insert ``count`` messages of ``size`` bytes in the transaction open on ``conn``;
    with ``keys``, message ``i`` has the partition key ``k<i % keys>``."""
    for start in range(0, count, FILL_CHUNK):
        outbox_relay.publish_many(
            conn,
            [
                outbox_relay.OutboxMessage(
                    exchange=exchange,
                    routing_key=ROUTING_KEY,
                    payload=payload(size, seq=i),
                    content_type="application/octet-stream",
                    partition_key=None if keys is None else f"k{i % keys}",
                )
                for i in range(start, min(count, start + FILL_CHUNK))
            ],
            schema=schema,
        )


def fill_committed(
    database_url: str, schema: str, exchange: str, count: int, *, size: int, per_tx: int = 50_000
) -> None:
    with psycopg.connect(database_url) as conn:
        for start in range(0, count, per_tx):
            fill(conn, schema, exchange, min(per_tx, count - start), size=size)
            conn.commit()


def wait_empty(database_url: str, schema: str, *, timeout_s: float) -> float:
    """Poll until the outbox is empty; returns the monotonic time it was seen empty."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute(query("outbox_empty", schema)).fetchone() == (True,):
                return time.monotonic()
            time.sleep(0.02)
    raise TimeoutError(f"the outbox of {schema} was not drained within {timeout_s:g} s")


def wait_relayed(
    env: Env,
    schema: str,
    queue: str,
    count: int,
    *,
    timeout_s: float,
    interval_s: float = 0.02,
    on_sample: Callable[[float, int], None] | None = None,
) -> float:
    """Wait until ``queue`` holds ``count`` messages, then until the outbox is empty, and
    check that none was lost (:func:`check_delivered`); returns the monotonic time the
    queue was seen holding them all (the relay deletes a
    batch right after its confirms, and the emptiness check walks the dead rows, which is
    not the relay's time). ``on_sample(t, left)`` gets the messages not yet in the queue
    at each poll.

    Progress is read from the queue's depth, which costs the broker one small frame: a
    count of the outbox, or even a look for its first row, walks the dead rows the relay
    left at the head of the table, and on a large backlog that took a good part of a
    core from the relay being measured."""
    deadline = time.monotonic() + timeout_s
    conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    try:
        channel = conn.channel()
        while True:
            depth = int(channel.queue_declare(queue, passive=True).method.message_count)
            if on_sample is not None:
                on_sample(time.monotonic(), max(0, count - depth))
            if depth >= count:
                delivered = time.monotonic()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {depth} of {count} messages reached {queue}")
            conn.sleep(interval_s)
    finally:
        conn.close()
    wait_empty(env.database_url, schema, timeout_s=max(60.0, deadline - time.monotonic()))
    # Every row is settled now: the depth is final (a batch republished after a cut
    # connection shows as duplicates).
    check_delivered(queue_depth(env.amqp_url, queue), count)
    return delivered


def wait_listening(database_url: str, schema: str, *, timeout_s: float = 20.0) -> None:
    """Wait until a relay on ``schema`` has raised its wake-up flag (it is idle)."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute(query("relay_waiting", schema)).fetchone() == (True,):
                return
            time.sleep(0.05)
    raise TimeoutError(f"no relay started waiting on {schema} within {timeout_s:g} s")


def table_sizes(database_url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query("table_sizes", schema), {"schema": schema}).fetchone()
    assert row is not None
    return {"table_bytes": int(row[0]), "index_bytes": int(row[1])}


# -- processes ----------------------------------------------------------------------------


@contextlib.contextmanager
def relay_process(env: Env, schema: str, *args: str) -> Iterator[psutil.Process]:
    """``outbox-relay run`` in a child process (from ``env.relay_source`` if set); SIGTERM
    and a clean exit afterwards."""
    command = [
        sys.executable,
        "-m",
        "outbox_relay",
        "run",
        "--database-url",
        env.database_url,
        "--amqp-url",
        env.amqp_url,
        "--schema",
        schema,
        "--log-level",
        "warning",
        "--log-format",
        "json",
        *args,
    ]
    # ``python -m`` puts the working directory first on the path: another tree's relay
    # runs with that tree as its working directory.
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=env.relay_source
    )
    try:
        yield psutil.Process(child.pid)
    finally:
        child.terminate()
        try:
            _, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            _, err = child.communicate()
        if child.returncode != 0:
            print(err.decode(errors="replace")[-2000:], file=sys.stderr)


def broker_processes() -> list[psutil.Process]:
    """The local RabbitMQ node's Erlang VM: nothing if there is none, or more than one
    Erlang VM and no telling which is the broker."""
    beams = [proc for proc in psutil.process_iter(["name"]) if proc.info["name"] == "beam.smp"]
    return beams if len(beams) == 1 else []


@contextlib.contextmanager
def busy_cores(processes: Sequence[psutil.Process]) -> Iterator[list[float]]:
    """The cores ``processes`` used together while the block ran (filled in at its end)."""
    result = [0.0]

    def cpu() -> float:
        total = 0.0
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    before, start = cpu(), time.monotonic()
    yield result
    result[0] = (cpu() - before) / (time.monotonic() - start)


def database_server(database_url: str) -> psutil.Process | None:
    """The postmaster of the server at ``database_url``, found as the parent of a session
    of ours; None when that server does not run on this machine."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        server = psutil.Process(int(row[0]) if row else 0).parent()
    except (psutil.Error, ValueError):
        return None
    return server


def server_cpu_s(server: psutil.Process | None) -> float | None:
    """CPU seconds the whole server has used so far (every database on it): the
    postmaster, its live children, and the children it has reaped (ended sessions)."""
    if server is None:
        return None
    try:
        times = server.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        children = server.children()
    except psutil.Error:
        return None
    for child in children:
        with contextlib.suppress(psutil.Error):  # a session that has just ended
            times = child.cpu_times()
            total += times.user + times.system
    return total


class Sampler:
    """Samples a process's RSS (and anything else) on a background thread."""

    def __init__(self, process: psutil.Process, *, interval_s: float = 0.25) -> None:
        self._process = process
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.rss: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.rss.append((time.monotonic(), self._process.memory_info().rss))
            self._stop.wait(self._interval_s)

    @property
    def peak_mb(self) -> float:
        return max((r for _, r in self.rss), default=0) / 2**20


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
