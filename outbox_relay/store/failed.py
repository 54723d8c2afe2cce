"""Dead outbox rows: list, show, retry and purge them (`outbox-relay failed`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from outbox_relay.store import lenient
from outbox_relay.store.connect import connect, translate_errors
from outbox_relay.store.sqlfiles import Queries

BATCH_ROWS = 1000


@dataclass(frozen=True)
class DeadRowFilter:
    """Which dead rows an operation touches; None matches everything."""

    ids: list[int] | None = None
    exchange: str | None = None
    partition_key: str | None = None
    older_than_s: float | None = None

    def params(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "exchange": self.exchange,
            "partition_key": self.partition_key,
            "older_than_s": self.older_than_s,
        }


@dataclass(frozen=True)
class DeadRow:
    id: int
    message_id: str
    exchange: str
    routing_key: str
    partition_key: str | None
    attempts: int
    last_error: str | None
    created_at: dt.datetime
    dead_at: dt.datetime
    payload_bytes: int
    content_type: str
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    payload: bytes | None = None


class FailedRows:
    """Operator access to dead rows of one schema."""

    def __init__(self, url: str, *, schema: str) -> None:
        self._url = url
        self._q = Queries("failed", schema=schema)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = connect(self._url, autocommit=True, application_name="outbox-relay failed")
        lenient.configure(conn)  # dead rows are often the ones Python cannot load
        return conn

    def find(self, where: DeadRowFilter, *, limit: int) -> list[DeadRow]:
        with self._connect() as conn, translate_errors("listing dead rows"):
            return [DeadRow(*row) for row in self._matching(conn, where, limit=limit, after_id=0)]

    def show(self, row_id: int) -> DeadRow | None:
        with self._connect() as conn, translate_errors(f"reading row {row_id}"):
            row = conn.execute(self._q["show"], {"id": row_id}).fetchone()
        return None if row is None else DeadRow(*row)

    def retry(self, where: DeadRowFilter, *, progress: Callable[[int], None]) -> int:
        """Reset matching dead rows to be published again; returns how many."""
        return self._apply("retry", where, progress)

    def purge(self, where: DeadRowFilter, *, progress: Callable[[int], None]) -> int:
        """Delete matching dead rows; returns how many."""
        return self._apply("purge", where, progress)

    def _apply(self, query: str, where: DeadRowFilter, progress: Callable[[int], None]) -> int:
        done = 0
        with self._connect() as conn, translate_errors(f"{query} of dead rows"):
            for ids in self._batches(conn, where):
                cursor = conn.execute(self._q[query], {"ids": ids})
                done += cursor.rowcount
                progress(done)
        return done

    def _batches(
        self, conn: psycopg.Connection[tuple[Any, ...]], where: DeadRowFilter
    ) -> Iterator[list[int]]:
        after_id = 0
        while True:
            rows = self._matching(conn, where, limit=BATCH_ROWS, after_id=after_id)
            if not rows:
                return
            ids = [row[0] for row in rows]
            after_id = ids[-1]
            yield ids

    def _matching(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        where: DeadRowFilter,
        *,
        limit: int,
        after_id: int,
    ) -> list[tuple[Any, ...]]:
        params = {**where.params(), "limit": limit, "after_id": after_id}
        return conn.execute(self._q["matching"], params).fetchall()
