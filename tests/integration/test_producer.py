"""publish() on real PostgreSQL with psycopg's connections and cursors, in the caller's
transaction (SQLAlchemy and Django: test_producer_sqlalchemy.py, test_producer_django.py)."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from psycopg import sql

import outbox_relay
from outbox_relay import InvalidMessageError, OutboxMessage
from tests.support.producing import committed, create_orders

pytestmark = pytest.mark.integration


def count(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.outbox").format(sql.Identifier(schema))
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_rows_exist_only_when_the_caller_commits(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(conn, exchange="orders", routing_key="a", payload={}, schema=schema)
        assert count(database_url, schema) == 0  # not visible before commit
        conn.rollback()
        assert count(database_url, schema) == 0
        outbox_relay.publish(conn, exchange="orders", routing_key="a", payload={}, schema=schema)
        conn.commit()
    assert count(database_url, schema) == 1


def test_a_cursor_and_a_batch_work_in_one_round_trip(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        one = outbox_relay.publish(
            cur, exchange="orders", routing_key="a", payload=[1], schema=schema
        )
        many = outbox_relay.publish_many(
            cur,
            [
                OutboxMessage(exchange="orders", routing_key=f"r{i}", payload={"i": i})
                for i in range(100)
            ],
            schema=schema,
        )
        conn.commit()
    assert uuid.UUID(one).version == 7
    assert str(uuid.UUID(one)) == one
    assert len(set(many)) == 100
    assert count(database_url, schema) == 101


def test_bad_input_raises_before_anything_is_written(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(conn, exchange="orders", routing_key="ok", payload={}, schema=schema)
        with pytest.raises(InvalidMessageError, match="payload"):
            outbox_relay.publish(
                conn, exchange="orders", routing_key="a", payload={1, 2}, schema=schema
            )
        with pytest.raises(InvalidMessageError, match=r"messages\[1\]: exchange"):
            outbox_relay.publish_many(
                conn,
                [
                    OutboxMessage(exchange="orders", routing_key="a", payload={}),
                    OutboxMessage(exchange="x" * 256, routing_key="a", payload={}),
                ],
                schema=schema,
            )
        tight = outbox_relay.Limits(max_payload_bytes=8)
        with pytest.raises(InvalidMessageError, match="max_payload_bytes"):
            outbox_relay.publish(
                conn,
                exchange="o",
                routing_key="a",
                payload=b"9 bytes!!",
                schema=schema,
                limits=tight,
            )
        with pytest.raises(InvalidMessageError, match=r"messages\[0\]: payload"):
            outbox_relay.publish_many(
                conn,
                [OutboxMessage(exchange="o", routing_key="a", payload=b"9 bytes!!")],
                schema=schema,
                limits=tight,
            )
        # the transaction is still healthy and holds only the good row
        conn.commit()
    assert count(database_url, schema) == 1


def test_one_message_and_a_batch_write_the_same_row(database_url: str, schema: str) -> None:
    arguments = {
        "exchange": "orders",
        "routing_key": "order.paid",
        "payload": b"\x00\xffbinary",
        "content_type": "application/x-custom",
        "headers": {"tenant": "t1", "n": [1, 2]},
        "partition_key": "order-7",
        "delay": 30,
    }
    plain = {**arguments, "delay": None, "headers": None, "partition_key": None}
    with psycopg.connect(database_url) as conn:
        for message in (arguments, plain):
            outbox_relay.publish(conn, schema=schema, **message)  # type: ignore[arg-type]
            outbox_relay.publish_many(conn, [OutboxMessage(**message)], schema=schema)  # type: ignore[arg-type]
        conn.commit()
        rows = conn.execute(
            sql.SQL(
                "SELECT exchange, routing_key, payload, content_type, headers, partition_key,"
                " round(extract(epoch FROM available_at - created_at)), attempts, dead_at"
                " FROM {}.outbox ORDER BY id"
            ).format(sql.Identifier(schema))
        ).fetchall()
    full = ("orders", "order.paid", b"\x00\xffbinary", "application/x-custom")
    assert rows[0] == rows[1] == (*full, {"tenant": "t1", "n": [1, 2]}, "order-7", 30, 0, None)
    assert rows[2] == rows[3] == (*full, {}, None, 0, 0, None)


def test_autocommit_outside_a_transaction_is_refused(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(InvalidMessageError, match="autocommit"):
            outbox_relay.publish(
                conn, exchange="orders", routing_key="a", payload={}, schema=schema
            )
        with conn.transaction():
            outbox_relay.publish(
                conn, exchange="orders", routing_key="a", payload={}, schema=schema
            )
    assert count(database_url, schema) == 1


def test_a_failed_transaction_is_refused_with_the_way_out(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(InvalidMessageError, match="roll it back"):
            outbox_relay.publish(
                conn, exchange="orders", routing_key="a", payload={}, schema=schema
            )


def test_async_connection(database_url: str, schema: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await outbox_relay.publish_async(
                conn, exchange="orders", routing_key="a", payload={"a": 1}, schema=schema
            )
            await outbox_relay.publish_many_async(
                conn,
                [OutboxMessage(exchange="orders", routing_key="b", payload=b"x")],
                schema=schema,
            )
            with pytest.raises(InvalidMessageError, match="publish_async"):
                outbox_relay.publish(
                    conn, exchange="orders", routing_key="a", payload={}, schema=schema
                )
            await conn.commit()

    asyncio.run(main())
    assert count(database_url, schema) == 2


def test_unsupported_connection_names_what_to_pass(schema: str) -> None:
    with pytest.raises(InvalidMessageError, match="psycopg 3 Connection"):
        outbox_relay.publish(
            object(), exchange="orders", routing_key="a", payload={}, schema=schema
        )


# What the producing guide shows for writers that cannot call publish() (another language,
# a data fix in psql): the same row, and the relay's wake-up in the same transaction.
PLAIN_SQL_WRITER = """
INSERT INTO orders (id, total) VALUES (42, 990);
INSERT INTO outbox (message_id, exchange, routing_key, payload, content_type,
                    headers, partition_key)
VALUES (gen_random_uuid(), 'orders', 'order.created',
        convert_to('{"order_id":42}', 'UTF8'), 'application/json',
        '{"tenant": "acme"}', '42');
SELECT outbox_wake();  -- outbox_wake(true) when the row is delayed
"""


def test_a_plain_sql_writer_writes_the_row_publish_writes(database_url: str, schema: str) -> None:
    create_orders(database_url, schema)
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(PLAIN_SQL_WRITER)
        conn.rollback()
        assert committed(database_url, schema) == ([], [])
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(PLAIN_SQL_WRITER)
        conn.commit()
        outbox_relay.publish(
            conn,
            exchange="orders",
            routing_key="order.created",
            payload={"order_id": 42},
            headers={"tenant": "acme"},
            partition_key="42",
            schema=schema,
        )
        conn.commit()
        rows = conn.execute(
            sql.SQL(
                "SELECT exchange, routing_key, payload, content_type, headers, partition_key,"
                " available_at - created_at, attempts, dead_at FROM {}.outbox ORDER BY id"
            ).format(sql.Identifier(schema))
        ).fetchall()
    assert committed(database_url, schema) == ([42], [{"order_id": 42}, {"order_id": 42}])
    assert rows[0] == rows[1]
