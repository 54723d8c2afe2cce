"""The database side of handlers' rate limits and pauses: ``<schema>.consumer_flow``.

One connection in autocommit, used by one thread (the consumer's flow gate): each call
is one statement of one short round trip, and no transaction stays open between them,
so nothing is held while a delivery waits for its token. The bucket arithmetic is in
:mod:`outbox_relay.consumer.rate_limit`; the statements are in ``sql/queries/flow.sql``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_S
from outbox_relay.errors import SchemaNotMigratedError, StoreError
from outbox_relay.store.connect import connect
from outbox_relay.store.deadline import Deadlines, guarded
from outbox_relay.store.pooler import pooler_in_front
from outbox_relay.store.sqlfiles import Queries


@dataclass(frozen=True)
class Lease:
    """What :meth:`FlowStore.lease` got: the bucket's ``max(tat, now) - now`` before the
    lease, or, while the handler is paused, no tokens and the seconds it stays paused."""

    start_s: float
    paused_s: float

    @property
    def granted(self) -> bool:
        return self.paused_s <= 0


class FlowStore:
    """Leases tokens and records pauses for the handlers of one consumer app."""

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        application_name: str,
        deadlines: Deadlines,
        dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S,
    ) -> None:
        self._url = url
        self._schema = schema
        self._application_name = application_name
        self._deadlines = deadlines
        self._dead_peer_timeout_s = dead_peer_timeout_s
        self._q = Queries("flow", schema=schema)
        self._conn: psycopg.Connection[Any] | None = None
        self.round_trips = 0

    def lease(self, *, consumer: str, key: str, count: int, span_s: float) -> Lease:
        """Take ``count`` tokens (moving the bucket by ``span_s``) unless the handler is
        paused. Raises StoreUnavailableError."""
        row = self._one(
            "flow_lease",
            {"consumer": consumer, "key": key, "span_s": span_s},
            action=f"taking {count} rate-limit token(s) for {consumer}",
        )
        return Lease(start_s=float(row[0]), paused_s=float(row[1]))

    def pause(self, *, consumer: str, seconds: float) -> float:
        """Pause ``consumer``'s handler in every process for ``seconds`` (a longer pause
        stays); the seconds it now stays paused. ValueError unless ``seconds`` is a
        finite number above 0 (the gate caps and checks it first)."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(
                f"a pause must last a finite number of seconds above 0, not {seconds!r}"
            )
        row = self._one(
            "flow_pause",
            {"consumer": consumer, "seconds": seconds},
            action=f"pausing {consumer}",
        )
        return float(row[0])

    def paused(self, consumers: Sequence[str]) -> dict[str, float]:
        """The handlers among ``consumers`` paused now, with the seconds left."""
        conn = self._connection()
        with guarded(self._deadlines, conn, connection="flow", action="reading pauses"):
            self.round_trips += 1
            rows = conn.execute(self._q["flow_paused"], {"consumers": list(consumers)}).fetchall()
        return {str(consumer): float(left) for consumer, left in rows}

    def check(self) -> None:
        """The table exists; SchemaNotMigratedError with the fix when it does not."""
        conn = self._connection()
        try:
            with guarded(self._deadlines, conn, connection="flow", action="checking rate limits"):
                conn.execute(self._q["flow_check"])
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
                raise SchemaNotMigratedError(
                    f"rate limits need {self._schema}.consumer_flow (migration 0010): run "
                    "`outbox-relay migrate` for this schema"
                ) from exc
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _one(self, name: str, params: dict[str, Any], *, action: str) -> tuple[Any, ...]:
        conn = self._connection()
        try:
            with guarded(self._deadlines, conn, connection="flow", action=action):
                self.round_trips += 1
                row = conn.execute(self._q[name], params).fetchone()
        except StoreError:
            self.close()  # replaced on the next call
            raise
        assert row is not None  # noqa: S101 - an upsert with RETURNING returns its row
        return tuple(row)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = connect(
                self._url,
                autocommit=True,
                application_name=self._application_name,
                dead_peer_timeout_s=self._dead_peer_timeout_s,
                prepare=True,
            )
            try:
                with guarded(
                    self._deadlines,
                    self._conn,
                    connection="flow",
                    action="checking for a connection pooler",
                ):
                    if pooler_in_front(self._conn):
                        # Behind a transaction pool the next statement may run on a
                        # server session that never saw this one's prepared statements.
                        self._conn.prepare_threshold = None
            except StoreError:
                self.close()
                raise
        return self._conn
