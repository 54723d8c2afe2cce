"""What a producer test looks at: its domain rows and its outbox rows, in the test's schema."""

from __future__ import annotations

import psycopg
from psycopg import sql


def create_orders(database_url: str, schema: str) -> str:
    """A domain table next to the outbox; returns its quoted name for the test's own SQL."""
    table = sql.Identifier(schema, "orders")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, total int)").format(table))
        return table.as_string(conn)


def committed(
    database_url: str, schema: str, *, table: str = "orders", column: str = "id"
) -> tuple[list[int], list[object]]:
    """The committed orders' ids (or another column of theirs) and the committed messages'
    payloads, as another session sees them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        orders = conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY id").format(
                sql.Identifier(column), sql.Identifier(schema, table)
            )
        ).fetchall()
        payloads = conn.execute(
            sql.SQL("SELECT convert_from(payload, 'UTF8')::jsonb FROM {} ORDER BY id").format(
                sql.Identifier(schema, "outbox")
            )
        ).fetchall()
    return [row[0] for row in orders], [row[0] for row in payloads]
