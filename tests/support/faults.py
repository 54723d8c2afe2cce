"""Tools of the fault tier: the relay as a real process, rows written in bulk, a tally.

Every fault here is aimed at processes and sessions the test itself started: the relay
subprocess (SIGKILL, SIGSTOP), its own database sessions (found by the application name
the test gives it), and its broker connection (found through the proxy in front of it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.support.broker import Received
from tests.support.consumer import ROOT
from tests.support.proxy import TcpProxy
from tests.support.relay import wait_for


def with_application_name(database_url: str, name: str) -> str:
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}application_name={name}"


class CliProcess:
    """``python -m outbox_relay COMMAND ...`` in a subprocess (from the project's root, so
    ``tests.`` and ``docs.`` modules import), its JSON log in a file."""

    # Logged once the process handles SIGTERM: stop() waits for it before signalling.
    started_event = ""

    def __init__(
        self,
        command: Sequence[str],
        *,
        database_url: str,
        amqp_url: str,
        schema: str,
        log_dir: Path,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.database_url = database_url
        self.log_path = log_dir / f"{self.name}.log"
        environment = {
            **os.environ,
            "OUTBOX_RELAY_DATABASE_URL": with_application_name(database_url, self.name),
            "OUTBOX_RELAY_AMQP_URL": amqp_url,
            "OUTBOX_RELAY_SCHEMA": schema,
            **(env or {}),
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "outbox_relay", *command, "--log-format", "json"],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
        self.process.wait(10)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills it if it does not stop).

        A process still importing has no handler yet and would die of the signal (-15),
        so the signal waits until the process logged its ``started_event``.
        """
        if self.alive:
            self.thaw()
            deadline = time.monotonic() + timeout_s
            while (
                self.alive and not self.events(self.started_event) and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines; a line cut short by SIGKILL is left out."""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        found = []
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == name]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class ConsumerProcess(CliProcess):
    """``python -m outbox_relay consume APP``; ``env`` configures the app's module."""

    started_event = "consumer.starting"

    def __init__(
        self,
        database_url: str,
        amqp_url: str,
        schema: str,
        app: str,
        *args: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            ["consume", app, *args],
            database_url=database_url,
            amqp_url=amqp_url,
            schema=schema,
            log_dir=log_dir,
            name=name or f"fault-consumer-{uuid.uuid4().hex[:8]}",
            env=env,
        )


class RelayProcess(CliProcess):
    """``python -m outbox_relay run``."""

    started_event = "relay.starting"

    def __init__(
        self,
        database_url: str,
        amqp_url: str,
        schema: str,
        *args: str,
        log_dir: Path,
        name: str | None = None,
    ) -> None:
        super().__init__(
            ["run", *args],
            database_url=database_url,
            amqp_url=amqp_url,
            schema=schema,
            log_dir=log_dir,
            name=name or f"fault-relay-{uuid.uuid4().hex[:8]}",
        )

    def backend_pids(self, server_url: str | None = None) -> dict[str, list[int]]:
        """This relay's database sessions by kind: {'work': [pid, pid], 'listener': [pid]}
        when connected (a relay has two work sessions: one claims ahead); on the server
        of ``server_url`` when given (one host of a multi-host URL), else where the
        relay's URL leads."""
        with psycopg.connect(server_url or self.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT application_name, pid FROM pg_stat_activity "
                "WHERE application_name IN (%s, %s) ORDER BY pid",
                (self.name, f"{self.name} listener"),
            ).fetchall()
        sessions: dict[str, list[int]] = {}
        for app, pid in rows:
            sessions.setdefault("listener" if app.endswith(" listener") else "work", []).append(pid)
        return sessions

    def terminate_session(self, kind: str) -> list[int]:
        """pg_terminate_backend of this relay's 'work' sessions or its 'listener' session,
        once it has them (it may be reconnecting after the last fault)."""
        found: dict[str, list[int]] = {}

        def connected() -> bool:
            found.update(self.backend_pids())
            return kind in found

        assert wait_for(connected, timeout_s=20), f"the relay has no {kind} session"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            for pid in found[kind]:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return found[kind]


@contextlib.contextmanager
def service_proxy(
    url: str, default_port: int, *, receive_buffer_bytes: int | None = None
) -> Iterator[tuple[TcpProxy, str]]:
    """A TcpProxy in front of the service at ``url`` and the same URL through the proxy."""
    target = urlsplit(url)
    proxy = TcpProxy(
        target.hostname or "127.0.0.1",
        target.port or default_port,
        receive_buffer_bytes=receive_buffer_bytes,
    )
    userinfo = target.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + f"127.0.0.1:{proxy.port}"
    try:
        yield proxy, urlunsplit(target._replace(netloc=netloc))
    finally:
        proxy.close()


def broker_proxy(
    amqp_url: str, *, receive_buffer_bytes: int | None = None
) -> contextlib.AbstractContextManager[tuple[TcpProxy, str]]:
    return service_proxy(amqp_url, 5672, receive_buffer_bytes=receive_buffer_bytes)


def rabbitmqctl(*args: str, timeout_s: float = 60.0) -> str:
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout_s, check=True
    )
    return result.stdout


def close_broker_connection(proxy: TcpProxy) -> list[str]:
    """`rabbitmqctl close_connection` for each connection that goes through ``proxy``."""
    ports = proxy.upstream_ports()
    closed = []
    for line in rabbitmqctl("list_connections", "pid", "peer_port", "-q").splitlines():
        pid, _, port = line.rpartition("\t")
        if port.isdigit() and int(port) in ports:
            rabbitmqctl("close_connection", pid, "fault test: connection closed on purpose")
            closed.append(pid)
    return closed


# -- rows and the tally ---------------------------------------------------------------


def insert_raw(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    exchange: str,
    key: str | None,
    n: int,
    routing_key: str = "ok.x",
    headers: str = "{}",
    content_type: str = "application/json",
    payload: bytes | None = None,
) -> int:
    """One row written with SQL, past ``publish``'s checks; returns its id."""
    body = payload if payload is not None else json.dumps({"n": n, "key": key}).encode()
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {}.outbox (message_id, exchange, routing_key, payload, content_type,"
            " headers, partition_key) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s::jsonb, %s)"
            " RETURNING id"
        ).format(sql.Identifier(schema)),
        (exchange, routing_key, body, content_type, headers, key),
    ).fetchone()
    assert row is not None
    return int(row[0])


def insert_rows(
    database_url: str,
    schema: str,
    exchange: str,
    numbers: range,
    *,
    keys: int = 0,
    routing_key: str = "k",
) -> None:
    """Committed outbox rows with payload {"n": n, "key": ...}; keyed by n % keys when
    ``keys``. Written with one INSERT ... SELECT, as a producer burst would, and woken
    up the way docs/producing.md tells writers that do not use publish()."""
    query = sql.SQL(
        """
        INSERT INTO {schema}.outbox
            (message_id, exchange, routing_key, payload, content_type, partition_key)
        SELECT gen_random_uuid(), %(exchange)s, %(rk)s,
               convert_to(json_build_object('n', g, 'key', k)::text, 'UTF8'),
               'application/json', k
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
             LATERAL (SELECT CASE WHEN %(keys)s > 0 THEN 'k' || (g %% %(keys)s) END AS k) AS kk
        ORDER BY g
        """
    ).format(schema=sql.Identifier(schema))
    with psycopg.connect(database_url) as conn:
        conn.execute(
            query,
            {
                "exchange": exchange,
                "rk": routing_key,
                "first": numbers.start,
                "last": numbers.stop - 1,
                "keys": keys,
            },
        )
        conn.execute(sql.SQL("SELECT {}.outbox_wake()").format(sql.Identifier(schema)))


def pending(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.outbox WHERE dead_at IS NULL").format(
            sql.Identifier(schema)
        )
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class Tally:
    """What a consumer saw, against what was committed."""

    expected: set[int]
    received: list[dict[str, Any]] = field(default_factory=list)

    def add(self, messages: Iterable[Received]) -> None:
        self.received.extend(json.loads(m.body) for m in messages)

    @property
    def numbers(self) -> list[int]:
        return [int(b["n"]) for b in self.received]

    @property
    def lost(self) -> set[int]:
        return self.expected - set(self.numbers)

    @property
    def duplicates(self) -> int:
        return len(self.numbers) - len(set(self.numbers))

    @property
    def invented(self) -> set[int]:
        return set(self.numbers) - self.expected

    def out_of_order_keys(self) -> list[str]:
        """Keys whose messages, counting each message's first delivery, are out of order."""
        seen: set[int] = set()
        last: dict[str, int] = {}
        bad: list[str] = []
        for body in self.received:
            n = int(body["n"])
            if n in seen:
                continue
            seen.add(n)
            key = body.get("key")
            if key is None:
                continue
            if last.get(key, -1) > n and key not in bad:
                bad.append(key)
            last[key] = n
        return bad


class Backlog:
    """A producer thread that keeps at least ``low_water`` rows pending (so the relays stay
    busy whenever a fault strikes) until ``limit`` rows were written or :meth:`stop`."""

    def __init__(
        self,
        database_url: str,
        schema: str,
        exchange: str,
        *,
        keys: int,
        low_water: int = 5000,
        chunk: int = 5000,
        limit: int = 60_000,
    ) -> None:
        self._args = (database_url, schema, exchange)
        self._keys, self._low_water, self._chunk, self._limit = keys, low_water, chunk, limit
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        database_url, schema, exchange = self._args
        while not self._stop.is_set() and self.written < self._limit:
            if pending(database_url, schema) < self._low_water:
                numbers = range(self.written, min(self.written + self._chunk, self._limit))
                insert_rows(database_url, schema, exchange, numbers, keys=self._keys)
                self.written = numbers.stop
            self._stop.wait(0.02)

    def stop(self) -> range:
        """Stops writing; the numbers written."""
        self._stop.set()
        self._thread.join(10)
        return range(self.written)

    def __enter__(self) -> Backlog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
