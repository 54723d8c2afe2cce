"""A producer committing steadily through outages and failovers, and what it knows.

One thread, one transaction per message: an order row and its outbox message (payload
``{"n": n, "key": key}``, partition key ``key``) committed together, as an application
does. A commit that returned is *committed*; a commit whose answer never came (the
connection died under it) is *uncertain*: it may or may not have happened, so a message
of it may arrive or not. Any error closes the connection and the next message is tried
on a new one (the URL may list several hosts: libpq finds the writable one). Writes to
one key are serialised (one thread), so id order is commit order per key.
"""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg import sql

import outbox_relay
from outbox_relay.errors import StoreError

RETRY_PAUSE_S = 0.05
CONNECT_TIMEOUT_S = 3


class SteadyProducer:
    def __init__(
        self,
        database_url: str,
        schema: str,
        exchange: str,
        *,
        keys: int = 8,
        rate_per_s: float = 200.0,
        routing_key: str = "order.created",
    ) -> None:
        self._url, self._schema, self._exchange = database_url, schema, exchange
        self._keys, self._pause_s, self._routing_key = keys, 1.0 / rate_per_s, routing_key
        self.committed: list[int] = []
        self.uncertain: list[int] = []
        self.errors = 0
        self.last_error = ""
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)

    @staticmethod
    def create_orders(database_url: str, schema: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (n int PRIMARY KEY, key text)").format(
                    sql.Identifier(schema, "orders")
                )
            )

    def start(self) -> SteadyProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def key_of(self, n: int) -> str:
        return f"k{n % self._keys}"

    def _run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        insert = sql.SQL("INSERT INTO {} (n, key) VALUES (%s, %s)").format(
            sql.Identifier(self._schema, "orders")
        )
        while not self._stop.is_set():
            n = self._next
            key = self.key_of(n)
            in_commit = False
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._url, connect_timeout=CONNECT_TIMEOUT_S)
                conn.execute(insert, (n, key))
                outbox_relay.publish(
                    conn,
                    exchange=self._exchange,
                    routing_key=self._routing_key,
                    payload={"n": n, "key": key},
                    partition_key=key,
                    schema=self._schema,
                )
                in_commit = True
                conn.commit()
            except (psycopg.Error, StoreError) as exc:  # publish() raises StoreError
                self.errors += 1
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if in_commit:
                    self.uncertain.append(n)
                    self._next += 1  # never reuse a number whose fate is unknown
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(RETRY_PAUSE_S)
                continue
            self.committed.append(n)
            self._next += 1
            self._stop.wait(self._pause_s)
        if conn is not None:
            conn.close()

    def wait_for(self, count: int, timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.committed) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.committed) >= count
