"""One suite, two stores: what the relay relies on from its store, checked on the
in-memory TableStore the unit tests drive the loop with, and on the PostgreSQL store.

A fake that passes here behaves like the table where the relay can tell."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import sql

from outbox_relay.message import OutboxRow
from outbox_relay.relay import Claim, Store, new_relay_id
from outbox_relay.relay.outcome import Failure, Reason
from outbox_relay.store.relay_store import PostgresStore
from tests.support.fakes import TableStore

pytestmark = pytest.mark.integration

EXCHANGE = "contract"


class Outbox(Protocol):
    """A store and its table: rows added as committed by a producer."""

    store: Store

    def add(self, n: int, *, key: str | None = None, size: int = 10) -> None: ...
    def unlocked(self) -> list[int]: ...


class FakeOutbox:
    def __init__(self) -> None:
        self.table = TableStore([])
        self.store: Store = self.table

    def add(self, n: int, *, key: str | None = None, size: int = 10) -> None:
        self.table.rows.append(
            OutboxRow(
                id=1000 + n,
                message_id=str(uuid.uuid4()),
                exchange=EXCHANGE,
                routing_key=f"r{n}",
                payload=b"x" * size,
                content_type="application/octet-stream",
                headers={},
                partition_key=key,
                created_at=dt.datetime.now(tz=dt.timezone.utc),
                attempts=0,
            )
        )

    def unlocked(self) -> list[int]:
        gone = self.table.locked | self.table.gone
        return [number(r) for r in self.table.rows if r.id not in gone]


class PostgresOutbox:
    def __init__(self, database_url: str, schema: str) -> None:
        self._url = database_url
        self._schema = schema
        self.store: Store = PostgresStore(
            url=database_url, schema=schema, relay_id=new_relay_id(), lease_ttl_s=8.0
        )

    def add(self, n: int, *, key: str | None = None, size: int = 10) -> None:
        with psycopg.connect(self._url) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.outbox (message_id, exchange, routing_key, payload,"
                    " content_type, partition_key)"
                    " VALUES (gen_random_uuid(), %s, %s, %s, 'application/octet-stream', %s)"
                ).format(sql.Identifier(self._schema)),
                (EXCHANGE, f"r{n}", b"x" * size, key),
            )

    def unlocked(self) -> list[int]:
        """Rows another session could lock now, in id order."""
        with psycopg.connect(self._url) as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT routing_key FROM {}.outbox ORDER BY id FOR UPDATE SKIP LOCKED"
                ).format(sql.Identifier(self._schema))
            ).fetchall()
        return [int(r[0][1:]) for r in rows]


def number(row: OutboxRow) -> int:
    return int(row.routing_key[1:])


def numbers(claim: Claim) -> list[int]:
    return [number(r) for r in claim.rows]


def by_number(claim: Claim, *wanted: int) -> list[int]:
    return [r.id for r in claim.rows if number(r) in wanted]


def later(claim: Claim, n: int, *, retry_in_s: float = 3600.0) -> Failure:
    [row_id] = by_number(claim, n)
    return Failure(row_id, "refused", retry_in_s, dead=False, reason=Reason.BROKER_REFUSED)


@pytest.fixture(params=["table_store", "postgres"])
def outbox(request: pytest.FixtureRequest) -> Iterator[Outbox]:
    if request.param == "table_store":
        made: Outbox = FakeOutbox()
    else:
        made = PostgresOutbox(
            request.getfixturevalue("database_url"), request.getfixturevalue("schema")
        )
    made.store.connect()
    try:
        made.store.heartbeat()  # the only relay: it takes every partition
        yield made
    finally:
        made.store.close()


def add(outbox: Outbox, *rows: Any) -> None:
    for n, key in rows:
        outbox.add(n, key=key)


class TestClaims:
    def test_due_rows_come_in_id_order_up_to_the_limit(self, outbox: Outbox) -> None:
        add(outbox, *[(n, None) for n in range(5)])
        claim = outbox.store.claim(3, 1 << 20)
        assert numbers(claim) == [0, 1, 2]
        assert claim.left_over == 0
        claim.release()

    def test_an_empty_table_gives_an_empty_claim(self, outbox: Outbox) -> None:
        claim = outbox.store.claim(10, 1 << 20)
        assert numbers(claim) == []
        claim.release()
        claim.release()  # releasing an ended claim does nothing

    def test_a_second_claim_skips_the_rows_of_the_first(self, outbox: Outbox) -> None:
        add(outbox, *[(n, None) for n in range(5)])
        first = outbox.store.claim(2, 1 << 20)
        second = outbox.store.claim(10, 1 << 20)
        assert (numbers(first), numbers(second)) == ([0, 1], [2, 3, 4])
        assert outbox.unlocked() == []
        second.release()
        first.release()
        assert outbox.unlocked() == [0, 1, 2, 3, 4]

    def test_published_rows_are_gone_and_rows_left_unsettled_come_again(
        self, outbox: Outbox
    ) -> None:
        add(outbox, *[(n, None) for n in range(4)])
        claim = outbox.store.claim(3, 1 << 20)
        claim.settle(by_number(claim, 0, 1), [])
        again = outbox.store.claim(10, 1 << 20)
        assert numbers(again) == [2, 3]
        again.release()
        assert outbox.unlocked() == [2, 3]

    def test_a_failed_row_waits_and_holds_back_only_its_own_key(self, outbox: Outbox) -> None:
        add(outbox, (0, "a"), (1, "b"), (2, "a"), (3, "b"), (4, None))
        claim = outbox.store.claim(10, 1 << 20)
        claim.settle(by_number(claim, 1), [later(claim, 0)])
        again = outbox.store.claim(10, 1 << 20)
        assert numbers(again) == [3, 4], "row 2 waits behind row 0 of its key"
        again.release()

    def test_rows_past_the_byte_budget_stay_locked_until_the_claim_ends(
        self, outbox: Outbox
    ) -> None:
        for n in range(4):
            outbox.add(n, size=100)
        claim = outbox.store.claim(3, 150)
        assert numbers(claim) == [0], "the first row always comes"
        assert claim.left_over == 2
        assert outbox.unlocked() == [3]
        claim.release()
        claim = outbox.store.claim(10, 1000)
        assert numbers(claim) == [0, 1, 2, 3]
        claim.release()


class TestHeartbeats:
    def test_a_heartbeat_never_commits_an_open_claim(self, outbox: Outbox) -> None:
        # Both work connections hold a claim. The heartbeat goes on a connection of its
        # own: it waits for the claims (which hold their partitions FOR SHARE) instead of
        # ending one, so their rows stay locked until each claim ends its own way.
        add(outbox, *[(n, None) for n in range(4)])
        first = outbox.store.claim(2, 1 << 20)
        second = outbox.store.claim(2, 1 << 20)
        with ThreadPoolExecutor(1) as pool:
            beat = pool.submit(outbox.store.heartbeat)
            time.sleep(0.3)
            assert outbox.unlocked() == [], "both claims still hold their rows"
            second.settle(by_number(second, 2), [])
            first.release()
            assert beat.result(timeout=10).owned
        assert outbox.unlocked() == [0, 1, 3]

    def test_leases_released_are_taken_again_by_the_next_heartbeat(self, outbox: Outbox) -> None:
        owned = outbox.store.heartbeat().owned
        outbox.store.release_leases()
        assert outbox.store.heartbeat().owned == owned
