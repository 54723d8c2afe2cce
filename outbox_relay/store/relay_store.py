"""The relay's side of the outbox: claim due rows, settle them, and the wake-up flag.

Two connections: one for work (claim, publish and settle happen inside one transaction
on it, so claimed rows stay locked until settled) and one that LISTENs for the trigger's
NOTIFY and carries this relay's wake-up flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.errors import StoreUnavailableError
from outbox_relay.message import OutboxRow
from outbox_relay.outcome import Failure
from outbox_relay.store.connect import connect, translate_errors
from outbox_relay.store.sqlfiles import Queries, lock_key, notify_channel


class PostgresStore:
    """Claims and settles outbox rows of one schema."""

    def __init__(self, *, url: str, schema: str, application_name: str = "outbox-relay") -> None:
        self._url = url
        self._schema = schema
        self._application_name = application_name
        self._q = Queries("relay", schema=schema)
        self._lock_key = lock_key("relay", schema)
        self._work: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None

    @property
    def schema(self) -> str:
        return self._schema

    def connect(self) -> None:
        """Open both connections and LISTEN; raises StoreUnavailableError."""
        self.close()
        self._work = connect(self._url, autocommit=False, application_name=self._application_name)
        self._listen = connect(
            self._url, autocommit=True, application_name=f"{self._application_name} listener"
        )
        with translate_errors(f"listening on schema {self._schema!r}"):
            self._listen.execute(
                sql.SQL("LISTEN {}").format(sql.Identifier(notify_channel(self._schema)))
            )
            self._listen.execute(self._q["listener_forget_gone"])

    def close(self) -> None:
        for conn in (self._work, self._listen):
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._work = self._listen = None

    # -- one batch: claim, then settle or release ----------------------------------------

    def claim(self, limit: int) -> list[OutboxRow]:
        """Lock up to ``limit`` due rows in id order, in a transaction left open.

        Returns nothing while another relay is claiming from the same schema.
        """
        conn = self._require(self._work)
        with translate_errors("claiming outbox rows"), conn.pipeline():
            # Pipeline mode sends BEGIN with the claim: one round trip.
            rows = conn.execute(
                self._q["claim_batch"], {"lock_key": self._lock_key, "limit": limit}
            ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def settle(self, published: Sequence[int], failures: Sequence[Failure]) -> None:
        """Delete published rows, record failures, and commit the claim's transaction."""
        conn = self._require(self._work)
        with translate_errors("settling outbox rows"), conn.pipeline():
            # The statements and COMMIT go out together: one round trip.
            if published:
                conn.execute(self._q["delete_published"], {"ids": list(published)})
            if failures:
                conn.execute(
                    self._q["record_failures"],
                    {
                        "ids": [f.row_id for f in failures],
                        "errors": [f.error for f in failures],
                        "delays": [f.retry_in_s for f in failures],
                        "dead": [f.dead for f in failures],
                    },
                )
            conn.commit()

    def release(self) -> None:
        """Roll the claim back: every claimed row stays as it was."""
        conn = self._work
        if conn is None or conn.closed:
            return
        with translate_errors("releasing claimed rows"):
            conn.rollback()

    # -- waking up ----------------------------------------------------------------------

    def set_waiting(self, waiting: bool) -> float | None:
        """Raise or lower this relay's wake-up flag; returns seconds until the next
        scheduled (delayed or retried) row, or None when there is none."""
        conn = self._require(self._listen)
        with translate_errors("setting the wake-up flag"):
            row = conn.execute(self._q["listener_set"], {"waiting": waiting}).fetchone()
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    def listen_fileno(self) -> int:
        return self._require(self._listen).fileno()

    def drain_notifications(self) -> int:
        """Consume pending notifications; they are only hints, so just count them."""
        conn = self._require(self._listen)
        with translate_errors("reading notifications"):
            return sum(1 for _ in conn.notifies(timeout=0))

    def forget_waiting(self) -> None:
        """Remove this relay's flag at shutdown, so producers stop notifying for it."""
        if self._listen is None or self._listen.closed:
            return
        with translate_errors("removing the wake-up flag"):
            self._listen.execute(self._q["listener_remove"])

    def _require(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any]:
        if conn is None or conn.closed:
            raise StoreUnavailableError("not connected to the database")
        return conn
