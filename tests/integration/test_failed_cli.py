"""`outbox-relay failed` against a real outbox: list, show, retry and purge dead rows."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

import outbox_relay

pytestmark = pytest.mark.integration


def cli(
    database_url: str, schema: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "outbox_relay",
            "failed",
            *args,
            "--database-url",
            database_url,
            "--schema",
            schema,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input=stdin,
    )


@pytest.fixture
def dead_rows(database_url: str, schema: str) -> list[int]:
    """Three dead rows (two for 'orders', one for 'billing') and one live row."""
    with psycopg.connect(database_url) as conn:
        for exchange, key in [
            ("orders", "a"),
            ("orders", "b"),
            ("billing", "a"),
            ("orders", "live"),
        ]:
            outbox_relay.publish(
                conn,
                exchange=exchange,
                routing_key="rk",
                payload={"k": key},
                partition_key=key,
                schema=schema,
            )
        conn.execute(
            sql.SQL(
                "UPDATE {}.outbox SET dead_at = now() - interval '1 hour', attempts = 10, "
                "last_error = 'unroutable: no queue' WHERE partition_key <> 'live'"
            ).format(sql.Identifier(schema))
        )
        conn.commit()
        ids = conn.execute(
            sql.SQL("SELECT id FROM {}.outbox WHERE dead_at IS NOT NULL ORDER BY id").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    return [row[0] for row in ids]


def states(database_url: str, schema: str) -> list[tuple[str, bool, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT partition_key, dead_at IS NOT NULL, attempts FROM {}.outbox ORDER BY id"
            ).format(sql.Identifier(schema))
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_list_filters_and_json(database_url: str, schema: str, dead_rows: list[int]) -> None:
    everything = cli(database_url, schema, "list")
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.count("unroutable: no queue") == 3
    orders = [
        json.loads(line)
        for line in cli(
            database_url, schema, "list", "--exchange", "orders", "--json"
        ).stdout.splitlines()
    ]
    assert [r["id"] for r in orders] == dead_rows[:2]
    assert "payload" not in orders[0]
    assert (
        cli(database_url, schema, "list", "--older-than", "2h").stdout.strip()
        == "no dead rows match"
    )
    bad = cli(database_url, schema, "list", "--older-than", "soon")
    assert bad.returncode == 2
    assert "not a duration" in bad.stderr


def test_show_prints_the_payload_only_when_asked(
    database_url: str, schema: str, dead_rows: list[int]
) -> None:
    plain = json.loads(cli(database_url, schema, "show", str(dead_rows[0])).stdout)
    assert plain["last_error"] == "unroutable: no queue"
    assert "payload" not in plain
    full = json.loads(cli(database_url, schema, "show", str(dead_rows[0]), "--payload").stdout)
    assert json.loads(full["payload"]) == {"k": "a"}
    missing = cli(database_url, schema, "show", "999999")
    assert missing.returncode == 1
    assert "no outbox row 999999" in missing.stderr


def test_show_prints_the_amqp_properties_the_row_sets(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn,
            exchange="orders",
            routing_key="rk",
            payload={},
            correlation_id="req-1",
            priority=5,
            expiration=60,
            schema=schema,
        )
        conn.execute(
            sql.SQL("UPDATE {}.outbox SET dead_at = now(), last_error = 'x'").format(
                sql.Identifier(schema)
            )
        )
        conn.commit()
    [row] = [
        json.loads(line) for line in cli(database_url, schema, "list", "--json").stdout.splitlines()
    ]
    shown = json.loads(cli(database_url, schema, "show", str(row["id"])).stdout)
    assert shown["properties"] == {"correlation_id": "req-1", "priority": 5, "expiration": "60000"}


def test_retry_resets_attempts_after_confirmation(
    database_url: str, schema: str, dead_rows: list[int]
) -> None:
    refused = cli(database_url, schema, "retry", "--key", "a", stdin="n\n")
    assert refused.returncode == 1
    assert states(database_url, schema)[0] == ("a", True, 10)
    done = cli(database_url, schema, "retry", "--key", "a", stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert "retried 2 rows" in done.stdout
    assert states(database_url, schema) == [
        ("a", False, 0),
        ("b", True, 10),
        ("a", False, 0),
        ("live", False, 0),
    ]


def test_purge_deletes_only_dead_matching_rows(
    database_url: str, schema: str, dead_rows: list[int]
) -> None:
    done = cli(database_url, schema, "purge", str(dead_rows[1]), str(dead_rows[2]), "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted 2 rows" in done.stdout
    assert states(database_url, schema) == [("a", True, 10), ("live", False, 0)]
    again = cli(database_url, schema, "purge", "--yes")
    assert "deleted 1 rows" in again.stdout
    assert states(database_url, schema) == [("live", False, 0)]
