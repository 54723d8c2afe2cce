"""What `outbox-relay status` reports: backlog, dead rows, relays and their partitions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from outbox_relay.errors import StoreError
from outbox_relay.store.connect import connect, translate_errors
from outbox_relay.store.sqlfiles import Queries


@dataclass(frozen=True)
class RelayInfo:
    relay_id: str
    hostname: str
    pid: int
    heartbeat_age_s: float
    partitions: list[int]


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    owner: str | None
    lease_left_s: float | None
    pending: int
    oldest_pending_s: float | None


@dataclass(frozen=True)
class Status:
    schema: str
    pending: int
    due: int
    retrying: int
    dead: int
    oldest_pending_s: float | None
    relays: list[RelayInfo]
    partitions: list[PartitionInfo]

    @property
    def unowned_partitions(self) -> list[int]:
        return [p.partition for p in self.partitions if p.owner is None]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unowned_partitions": self.unowned_partitions}


def read_status(url: str, *, schema: str) -> Status:
    """One read-only snapshot (a REPEATABLE READ transaction, so the parts agree)."""
    queries = Queries("status", schema=schema)
    conn = connect(url, autocommit=False, application_name="outbox-relay status")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn, translate_errors(f"reading the status of schema {schema!r}"):
        totals = conn.execute(queries["totals"]).fetchone()
        relays = conn.execute(queries["relays"]).fetchall()
        partitions = conn.execute(queries["partitions"]).fetchall()
    assert totals is not None  # noqa: S101 - an aggregate always returns a row
    return Status(
        schema=schema,
        pending=totals[0],
        due=totals[1],
        retrying=totals[2],
        dead=totals[3],
        oldest_pending_s=totals[4],
        relays=[RelayInfo(r[0], r[1], r[2], r[3], list(r[4])) for r in relays],
        partitions=[PartitionInfo(*p) for p in partitions],
    )


def backlog_figures(url: str, schema: str) -> dict[str, float | None]:
    """The backlog gauges for a scrape; on a database error, only a failed-scrape flag."""
    try:
        status = read_status(url, schema=schema)
    except StoreError:
        return {"outbox_relay_backlog_scrape_ok": 0.0}
    return {
        "outbox_relay_backlog_rows": float(status.pending),
        "outbox_relay_due_rows": float(status.due),
        "outbox_relay_dead_rows": float(status.dead),
        "outbox_relay_oldest_pending_seconds": status.oldest_pending_s or 0.0,
        "outbox_relay_unowned_partitions": float(len(status.unowned_partitions)),
        "outbox_relay_backlog_scrape_ok": 1.0,
    }
