"""The database side of :mod:`outbox_relay.consumer.testing`: a handler's transaction on a
connection the test owns, and the outbox rows the handler wrote in it.

The trial runs as a savepoint inside the test's transaction, so a failed handler undoes
its inbox row and its work (as the consumer's rollback would) but not what the test set up
before; a handled one leaves its work in the transaction for the test to look at, and is
committed only when the test asks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from outbox_relay.errors import ConfigurationError
from outbox_relay.store.sqlfiles import Queries


@dataclass(frozen=True)
class WrittenRow:
    """An outbox row as ``outbox_relay.publish`` wrote it."""

    message_id: str
    exchange: str
    routing_key: str
    payload: bytes
    content_type: str
    headers: dict[str, Any] = field(default_factory=dict)
    partition_key: str | None = None
    properties: dict[str, Any] | None = None
    delay_s: float = 0.0

    def json(self) -> Any:
        """The payload decoded from JSON."""
        return json.loads(self.payload)


@contextlib.contextmanager
def trial_connection(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for trials (autocommit off), rolled back and closed on exit."""
    conn = psycopg.connect(url, autocommit=False, application_name="outbox-relay testing")
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


class TrialTransaction:
    """One handler run on ``conn`` (a psycopg ``Connection`` with autocommit off)."""

    def __init__(self, conn: object, *, schema: str) -> None:
        if not isinstance(conn, psycopg.Connection):
            raise ConfigurationError(
                f"expected a psycopg.Connection for the handler's transaction, got "
                f"{type(conn).__name__}"
            )
        if conn.autocommit:
            raise ConfigurationError(
                "the connection is in autocommit mode: the handler's work could not be "
                "rolled back; connect with autocommit=False"
            )
        self.conn: psycopg.Connection[Any] = conn
        self._q = Queries("consumer", schema=schema)
        self._before = 0

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """The trial's savepoint: released on success, rolled back to on an exception."""
        row = self.conn.execute(self._q["outbox_last_id"]).fetchone()  # opens the transaction
        self._before = int(row[0]) if row else 0
        with self.conn.transaction():
            yield

    def record(self, *, consumer: str, message_id: str) -> bool:
        """Insert the inbox row; False when the message was handled (and committed) before."""
        # The test's connection waits for locks as it always does.
        setting = self.conn.execute(self._q["lock_timeout"]).fetchone()
        lock_wait = str(setting[0]) if setting is not None else "0"
        row = self.conn.execute(
            self._q["inbox_insert"],
            {
                "consumer": consumer,
                "message_id": message_id,
                "lock_wait": lock_wait,
                "lock_wait_after": lock_wait,
            },
        ).fetchone()
        return row is not None

    def written(self) -> list[WrittenRow]:
        """The outbox rows written since the savepoint began, oldest first."""
        rows = self.conn.execute(self._q["outbox_written_since"], {"after": self._before})
        return [
            WrittenRow(
                message_id=r[0],
                exchange=r[1],
                routing_key=r[2],
                payload=bytes(r[3]),
                content_type=r[4],
                headers=dict(r[5] or {}),
                partition_key=r[6],
                properties=r[7],
                delay_s=max(0.0, float(r[8] or 0.0)),
            )
            for r in rows.fetchall()
        ]

    def commit(self) -> None:
        self.conn.commit()
