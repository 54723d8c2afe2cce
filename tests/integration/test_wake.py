"""Producers wake a waiting relay themselves: publish(), outbox_wake(), the optional trigger.

A connection of the test stands in for the relay: it raises and lowers a wake-up flag in
``outbox_listener`` and LISTENs on the schema's channel, so every NOTIFY is counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.rows import dict_row

import outbox_relay
from outbox_relay.cli import main
from outbox_relay.errors import StoreError
from outbox_relay.relay.wakeup import FLAG_TRUST_S, FlagSeen
from outbox_relay.store import writer
from outbox_relay.store.sqlfiles import notify_channel

pytestmark = pytest.mark.integration


class Listener:
    def __init__(self, database_url: str, schema: str) -> None:
        self.schema = schema
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(notify_channel(schema))))

    def flag(self, *, waiting: bool) -> None:
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.outbox_listener (backend_pid, waiting) VALUES"
                " (pg_backend_pid(), %s) ON CONFLICT (backend_pid) DO UPDATE"
                " SET waiting = excluded.waiting"
            ).format(sql.Identifier(self.schema)),
            (waiting,),
        )

    def notifications(self) -> int:
        return len(self.payloads())

    def payloads(self) -> list[str]:
        return [n.payload for n in self.conn.notifies(timeout=0.3)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listener(database_url: str, schema: str) -> Iterator[Listener]:
    listening = Listener(database_url, schema)
    try:
        yield listening
    finally:
        listening.conn.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The producers' view of the flag, on a clock the test moves."""
    fake = Clock()
    monkeypatch.setattr(writer, "FLAG_SEEN", FlagSeen(clock=fake))
    return fake


def publish_one(database_url: str, schema: str, **kw: Any) -> None:
    with psycopg.connect(database_url, **kw) as conn:
        outbox_relay.publish(conn, exchange="orders", routing_key="k", payload={}, schema=schema)
        conn.commit()


def raw_insert(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.outbox (message_id, exchange, routing_key, payload, content_type)"
            " VALUES (gen_random_uuid(), 'orders', 'k', '\\x7b7d', 'application/json')"
        ).format(sql.Identifier(schema))
    )


def test_publish_notifies_a_waiting_relay_and_skips_the_look_briefly_after_seeing_none(
    database_url: str, schema: str, listener: Listener, clock: Clock
) -> None:
    listener.flag(waiting=True)
    publish_one(database_url, schema)
    publish_one(database_url, schema)
    assert listener.notifications() == 2, "while the flag may be up, every publish looks"

    listener.flag(waiting=False)
    publish_one(database_url, schema)
    assert listener.notifications() == 0

    # Raised again: a producer that saw it down a moment ago does not look yet (the relay
    # covers that window by claiming once more LATE_LOOK_S after raising its flag) ...
    listener.flag(waiting=True)
    publish_one(database_url, schema)
    assert listener.notifications() == 0
    # ... and looks again once FLAG_TRUST_S has passed.
    clock.now += FLAG_TRUST_S
    publish_one(database_url, schema)
    assert listener.notifications() == 1


def test_the_flag_is_seen_per_database_and_schema(
    database_url: str, schema: str, listener: Listener, clock: Clock
) -> None:
    # Another schema of the same database was just seen down: that says nothing here.
    with psycopg.connect(database_url) as conn:
        info = conn.info
        server = (info.host, info.port, info.dbname)
    writer.FLAG_SEEN.saw((*server, schema + "_other"), relay_may_wait=False, looked_at=clock.now)
    listener.flag(waiting=True)
    publish_one(database_url, schema)
    assert listener.notifications() == 1
    # This one seen down is trusted (no look, no NOTIFY) until FLAG_TRUST_S has passed.
    writer.FLAG_SEEN.saw((*server, schema), relay_may_wait=False, looked_at=clock.now)
    publish_one(database_url, schema)
    assert listener.notifications() == 0


def test_under_repeatable_read_a_down_flag_is_never_trusted(
    database_url: str, schema: str, listener: Listener, clock: Clock
) -> None:
    # Such a transaction read the flag at its start, which may be long before the insert.
    listener.flag(waiting=False)
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        outbox_relay.publish(conn, exchange="orders", routing_key="k", payload={}, schema=schema)
        conn.commit()
    listener.flag(waiting=True)
    publish_one(database_url, schema)
    assert listener.notifications() == 1


def test_other_writers_wake_the_relay_with_outbox_wake(
    database_url: str, schema: str, listener: Listener
) -> None:
    listener.flag(waiting=True)
    with psycopg.connect(database_url) as conn:
        raw_insert(conn, schema)
        conn.commit()
    assert listener.notifications() == 0, "a bare INSERT has no trigger to wake anyone"
    with psycopg.connect(database_url) as conn:
        raw_insert(conn, schema)
        row = conn.execute(
            sql.SQL("SELECT {}.outbox_wake()").format(sql.Identifier(schema))
        ).fetchone()
        conn.commit()
    assert row == (True,)
    assert listener.notifications() == 1


def test_the_wake_trigger_is_there_only_when_asked_for(
    database_url: str, schema: str, listener: Listener
) -> None:
    printed = CliRunner().invoke(main, ["sql", "--schema", schema, "--wake-trigger"])
    assert printed.exit_code == 0, printed.output
    assert printed.output.endswith(f'EXECUTE FUNCTION "{schema}".outbox_notify();\n')
    plain = CliRunner().invoke(main, ["sql", "--schema", schema]).output
    assert "CREATE TRIGGER" not in plain
    assert "DROP" not in plain

    result = CliRunner().invoke(
        main, ["migrate", "--database-url", database_url, "--schema", schema, "--wake-trigger"]
    )
    assert result.exit_code == 0, result.output
    assert "wake-up trigger" in result.output
    listener.flag(waiting=True)
    with psycopg.connect(database_url) as conn:
        raw_insert(conn, schema)
        conn.commit()
    assert listener.notifications() == 1
    listener.flag(waiting=False)
    with psycopg.connect(database_url) as conn:
        raw_insert(conn, schema)
        conn.commit()
    assert listener.notifications() == 0


def test_a_delayed_message_is_announced_as_scheduled(
    database_url: str, schema: str, listener: Listener, clock: Clock
) -> None:
    # The relay then reads when it is due instead of finding nothing to claim.
    listener.flag(waiting=True)
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn, exchange="orders", routing_key="k", payload={}, schema=schema, delay=5
        )
        conn.commit()
    publish_one(database_url, schema)
    assert listener.payloads() == ["scheduled", ""]


def test_publish_keeps_the_callers_row_factory_and_cursor(
    database_url: str, schema: str, listener: Listener, clock: Clock
) -> None:
    listener.flag(waiting=True)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        outbox_relay.publish(conn, exchange="orders", routing_key="k", payload={}, schema=schema)
        with conn.cursor() as cursor:
            cursor.execute("SELECT 42 AS answer")
            outbox_relay.publish(
                cursor, exchange="orders", routing_key="k", payload={}, schema=schema
            )
            assert cursor.fetchone() == {"answer": 42}
        conn.commit()
    assert listener.notifications() == 1  # one transaction: PostgreSQL folds the two


def test_an_outbox_without_its_wake_function_is_named_with_the_fix(
    database_url: str, schema: str, clock: Clock
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP FUNCTION {}.outbox_wake").format(sql.Identifier(schema)))
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(StoreError, match=r"no outbox_wake\(\).*outbox-relay migrate"),
    ):
        outbox_relay.publish(conn, exchange="orders", routing_key="k", payload={}, schema=schema)


def test_failed_retry_wakes_a_waiting_relay(
    database_url: str, schema: str, listener: Listener
) -> None:
    # Rows made due again are like new rows: the relay must not wait for its poll.
    with psycopg.connect(database_url, autocommit=True) as conn:
        raw_insert(conn, schema)
        conn.execute(sql.SQL("UPDATE {}.outbox SET dead_at = now()").format(sql.Identifier(schema)))
    listener.flag(waiting=True)
    result = CliRunner().invoke(
        main, ["failed", "retry", "--yes", "--database-url", database_url, "--schema", schema]
    )
    assert result.exit_code == 0, result.output
    assert "retried 1 rows" in result.output
    assert listener.notifications() == 1
