"""Rows written with plain SQL, every column at its extreme, among good rows: each bad
row is dead at its first attempt with a reason naming the field, every good row is
delivered, and the relay neither exits nor reconnects because of a row."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from outbox_relay.store.failed import DeadRowFilter, FailedRows
from outbox_relay.store.status import read_status
from tests.faults.conftest import Report
from tests.support.faults import insert_raw
from tests.support.relay import outbox_rows, wait_for
from tests.support.scene import Scene, stops_cleanly

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

WAIT_S = 60.0


def nested(depth: int) -> str:
    return '{"deep":' + '{"a":' * (depth - 1) + "1" + "}" * depth


# name -> (column overrides for insert_raw, what the dead row's last_error must name)
BAD_ROWS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "exchange-300-bytes": ({"exchange": "E" * 300}, ("exchange", "255")),
    "exchange-256-bytes-of-utf8": ({"exchange": "é" * 128}, ("exchange", "255")),
    "routing-key-300-bytes": ({"routing_key": "ok." + "r" * 300}, ("routing_key", "255")),
    "content-type-huge": ({"content_type": "x/" + "y" * 100_000}, ("content_type", "255")),
    # 60 KB of JSON, 150 KB once AMQP-encoded: over the broker's frame_max.
    "headers-over-frame-max": (
        {"headers": json.dumps({"h": [0] * 30000})},
        ("headers", "frame_max"),
    ),
    "many-headers-over-frame-max": (
        {"headers": json.dumps({f"k{i}": "v" * 1400 for i in range(100)})},
        ("headers", "frame_max"),
    ),
    "headers-nested-too-deep": ({"headers": nested(40)}, ("headers", "deep")),
    "headers-nested-past-python": ({"headers": nested(5000)}, ("headers", "deep")),
    "headers-number-of-5000-digits": (
        {"headers": '{"n": 1e5000}'},
        ("headers", "digits"),
    ),
    "headers-number-over-64-bits": ({"headers": '{"n": 18446744073709551616}'}, ("n", "64")),
    "nested-header-name-300-bytes": (
        {"headers": json.dumps({"t": {"n" * 300: 1}})},
        ("headers", "255"),
    ),
    "headers-an-array": ({"headers": "[1, 2]"}, ("headers", "object")),
    # Dead, and created at a time Python's datetime cannot hold.
    "created-at-infinity": (
        {"exchange": "E" * 300, "created_at": "infinity"},
        ("exchange", "255"),
    ),
}


# Columns of good rows at their extremes: created_at past what Python's datetime holds
# or before AMQP's timestamps (the row is delivered); available_at in the far future
# (the row waits, and holds back nothing but its key).
CREATED_AT = ("infinity", "-infinity", "20000-01-01 00:00:00+00", "1900-01-01 00:00:00+00")
# The relay computes how long to sleep from the earliest, so the latest finite time
# comes after the relay slept with only 'infinity' scheduled.
AVAILABLE_AT = ("infinity",)
LATER_AVAILABLE_AT = ("294276-12-31 00:00:00+00",)


def insert_with(conn: psycopg.Connection[Any], schema: str, row_id: int, **values: Any) -> None:
    """Set columns insert_raw does not take on the row just written."""
    for column, value in values.items():
        conn.execute(
            sql.SQL("UPDATE {}.outbox SET {} = %s WHERE id = %s").format(
                sql.Identifier(schema), sql.Identifier(column)
            ),
            (value, row_id),
        )


def test_rows_at_every_extreme_fail_alone_among_good_rows(
    scene: Scene, report_fault: Report
) -> None:
    database_url, schema = scene.database_url, scene.schema
    exchange, queue = scene.route("ok.#")
    bad_ids: dict[int, str] = {}
    expected: set[int] = set()
    n = 0
    with psycopg.connect(database_url) as conn:
        for name, (columns, _) in BAD_ROWS.items():
            # A good row before, the bad row, and a later row of its key, which waits
            # for the bad row and then goes out.
            insert_raw(conn, schema, exchange=exchange, key=f"before-{name}", n=n)
            row = {"exchange": exchange, **columns}
            later = {c: row.pop(c) for c in ("created_at",) if c in row}
            bad_id = insert_raw(conn, schema, key=name, n=n + 1, **row)
            insert_with(conn, schema, bad_id, **later)
            bad_ids[bad_id] = name
            insert_raw(conn, schema, exchange=exchange, key=name, n=n + 2)
            expected |= {n, n + 2}
            n += 3
        # Good rows at their own extremes: delivered.
        twins = insert_raw(conn, schema, exchange=exchange, key="twin", n=n)
        twin = insert_raw(conn, schema, exchange=exchange, key="twin", n=n + 1)
        conn.execute(
            sql.SQL(
                "UPDATE {}.outbox SET message_id = 'ffffffff-ffff-ffff-ffff-ffffffffffff' "
                "WHERE id IN (%s, %s)"
            ).format(sql.Identifier(schema)),
            (twins, twin),
        )
        insert_raw(conn, schema, exchange=exchange, key="k" * 100_000, n=n + 2)
        insert_raw(
            conn, schema, exchange=exchange, key=None, n=n + 3, routing_key="ok." + "r" * 252
        )
        insert_raw(conn, schema, exchange=exchange, key="ctype", n=n + 4, content_type="c" * 255)
        expected |= set(range(n, n + 5))
        n += 5
        for when in CREATED_AT:
            row_id = insert_raw(conn, schema, exchange=exchange, key=f"created-{when}", n=n)
            insert_with(conn, schema, row_id, created_at=when)
            expected.add(n)
            n += 1
        far = {}
        for when in AVAILABLE_AT:
            row_id = insert_raw(conn, schema, exchange=exchange, key=f"far-{when}", n=n)
            insert_with(conn, schema, row_id, available_at=when)
            far[row_id] = when
            n += 1
        conn.commit()
    scene.insert(exchange, range(n, n + 1000), keys=20, routing_key="ok.y")
    expected |= set(range(n, n + 1000))

    relay = scene.relay("--batch-size", "50")

    def settled() -> None:
        """Waits until no row is left but the dead and the far-future ones; the relay
        must still run."""

        def only_far_left() -> bool:
            left = outbox_rows(database_url, schema, "id, dead_at IS NOT NULL")
            return {i for i, dead in left if not dead} == set(far) or not relay.alive

        done = wait_for(only_far_left, timeout_s=WAIT_S)
        assert relay.alive, relay.log_text()[-4000:]
        assert done, relay.log_text()[-4000:]

    with stops_cleanly(relay):
        settled()
        # Idle, the relay reads when the next scheduled row is due (the far-future ones),
        # sleeps, and wakes for the next rows.
        time.sleep(1.0)
        with psycopg.connect(database_url) as conn:
            for when in LATER_AVAILABLE_AT:
                row_id = insert_raw(conn, schema, exchange=exchange, key=f"far-{when}", n=-1)
                insert_with(conn, schema, row_id, available_at=when)
                far[row_id] = when
            conn.commit()
        scene.insert(exchange, range(n + 1000, n + 1100), routing_key="ok.z")
        expected |= set(range(n + 1000, n + 1100))
        settled()
        tally = scene.tally(queue, expected)

    report_fault(f"rows at their extremes ({len(BAD_ROWS)} kinds) among 1k", tally)
    assert not tally.lost
    assert not tally.invented, "a bad row was published"
    assert tally.out_of_order_keys() == []

    left = outbox_rows(database_url, schema, "id, last_error, attempts, dead_at IS NOT NULL")
    assert {row_id for row_id, *_ in left} == set(bad_ids) | set(far)
    for row_id, error, attempts, dead in left:
        if row_id in far:
            assert (error, attempts, dead) == (None, 0, False), far[row_id]
            continue
        name = bad_ids[row_id]
        assert dead, name
        assert attempts == 1, f"{name}: dead at its first attempt"
        for word in BAD_ROWS[name][1]:
            assert word in error, (name, error)
    assert len(relay.events("publisher.connected")) == 1, "a row cost a reconnect"
    # `outbox-relay status` and `failed list|show` read them too.
    assert read_status(database_url, schema=schema).pending == len(far)
    failed = FailedRows(database_url, schema=schema)
    assert {row.id for row in failed.find(DeadRowFilter(), limit=100)} == set(bad_ids)
    for row_id in bad_ids:
        shown = failed.show(row_id)
        assert shown is not None
        assert shown.last_error == {i: e for i, e, *_ in left}[row_id]
    assert not relay.events("relay.broker_unavailable")
    assert not relay.events("relay.database_unavailable")
