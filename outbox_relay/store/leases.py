"""Partition leases in the database: a relay's heartbeat takes or hands back partitions
until it holds its fair share (:mod:`outbox_relay.relay.partitions` decides the share).

Each step is one short transaction on the relay's LISTEN connection, where no claim is
ever open, so renewing a lease can neither commit nor roll back a claim. The server ends
a lease transaction the relay stops inside for longer than the lease.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import psycopg

from outbox_relay.relay.partitions import Leases, fair_share, surplus
from outbox_relay.store.sqlfiles import Queries


class LeaseQueries:
    """The lease statements of one schema, run for one relay."""

    def __init__(self, *, schema: str, relay_id: str, lease_ttl_s: float) -> None:
        self._q = Queries("leases", schema=schema)
        self._relay_id = relay_id
        self._lease_ttl_s = lease_ttl_s

    def forget_stale_relays(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._q["forget_stale_relays"])

    def heartbeat(self, conn: psycopg.Connection[Any]) -> Leases:
        """Say this relay is alive, renew its leases, and take or hand back partitions
        until it holds its fair share."""
        ids = {"relay_id": self._relay_id, "ttl_s": self._lease_ttl_s}
        with self._transaction(conn):
            row = conn.execute(
                self._q["heartbeat"],
                {**ids, "hostname": socket.gethostname(), "pid": os.getpid()},
            ).fetchone()
            assert row is not None  # noqa: S101 - the statement always returns one row
            owned, live, partitions = list(row[0]), tuple(row[1]), int(row[2])
            share = fair_share(partitions, live, self._relay_id)
            extra = surplus(owned, share)
            if extra:
                conn.execute(self._q["release"], {**ids, "partitions": extra})
                owned = [p for p in owned if p not in extra]
            elif len(owned) < share:
                taken = conn.execute(
                    self._q["acquire"], {**ids, "wanted": share - len(owned)}
                ).fetchall()
                owned += [r[0] for r in taken]
        return Leases(owned=tuple(sorted(owned)), live=live, partitions=partitions)

    def release_all(self, conn: psycopg.Connection[Any]) -> None:
        """Hand every partition back and leave, so others take over at once."""
        with self._transaction(conn):
            conn.execute(self._q["release_all"], {"relay_id": self._relay_id})
            conn.execute(self._q["unregister"], {"relay_id": self._relay_id})

    @contextlib.contextmanager
    def _transaction(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """A transaction that the server ends if the relay stops inside it for longer
        than the lease (see ``lease_transaction``)."""
        with conn.transaction():
            conn.execute(
                self._q["lease_transaction"],
                {"timeout_ms": str(int(self._lease_ttl_s * 1000))},
            )
            yield
