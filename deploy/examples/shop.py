"""The example application of deploy/docker-compose.yml: a shop that places orders and a
billing service that invoices them.

    python shop.py setup              # as the owner, after `outbox-relay migrate`: tables, grants
    python shop.py produce            # place an order every 0.2 s, each with its message
    outbox-relay consume shop:app     # invoice each order once (PYTHONPATH holds this folder)

They read OUTBOX_RELAY_DATABASE_URL (each with its own role: the owner, `shop`, `billing`;
see roles.sql) and OUTBOX_RELAY_AMQP_URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psycopg
from psycopg import sql

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message

EXCHANGE = "shop.orders"
SCHEMA = os.environ.get("OUTBOX_RELAY_SCHEMA", "public")

# The roles of roles.sql, as `outbox-relay sql --grants` kinds.
ROLES = {"relay": "relay", "producer": "shop", "consumer": "billing"}

app = ConsumerApp(name="billing", schema=SCHEMA)


def create_tables(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS shop_orders (id uuid PRIMARY KEY, total numeric)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS billing_invoices (order_id uuid PRIMARY KEY, total numeric)"
    )
    conn.commit()


def setup(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """As the owner, after `outbox-relay migrate`: the shop's tables, and to each role the
    least it needs (the outbox's grants from `outbox-relay sql --grants`, then its tables)."""
    create_tables(conn)
    # A consumer role is granted the inbox rows of its consumer app only (ROLE:APP).
    kinds = [
        f"--grants={kind}={role}:{app.name}" if kind == "consumer" else f"--grants={kind}={role}"
        for kind, role in ROLES.items()
    ]
    grants = subprocess.run(
        [sys.executable, "-m", "outbox_relay", "sql", "--schema", SCHEMA, *kinds],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    conn.execute(grants.encode())
    grant_insert = sql.SQL("GRANT INSERT ON {} TO {}")
    conn.execute(
        grant_insert.format(sql.Identifier("shop_orders"), sql.Identifier(ROLES["producer"]))
    )
    conn.execute(
        grant_insert.format(sql.Identifier("billing_invoices"), sql.Identifier(ROLES["consumer"]))
    )
    conn.commit()


def place_order(conn: psycopg.Connection[tuple[object, ...]], total: float) -> uuid.UUID:
    """The domain write and its message, in one transaction."""
    order_id = uuid.uuid4()
    conn.execute("INSERT INTO shop_orders (id, total) VALUES (%s, %s)", (order_id, total))
    outbox_relay.publish(
        conn,
        exchange=EXCHANGE,
        routing_key="order.created",
        payload={"order_id": str(order_id), "total": total},
        partition_key=str(order_id),
        schema=SCHEMA,
    )
    conn.commit()
    return order_id


@app.handler(exchange=EXCHANGE, queue="billing.orders", bindings=["order.created"])
def invoice(message: Message, tx: psycopg.Connection[tuple[object, ...]]) -> None:
    """Runs in the same transaction as the inbox row: an order is invoiced exactly once."""
    body = message.body
    tx.execute(
        "INSERT INTO billing_invoices (order_id, total) VALUES (%s, %s)",
        (body["order_id"], body["total"]),
    )


def produce(count: int | None = None, interval_s: float = 0.2) -> None:
    url = os.environ.get("OUTBOX_RELAY_DATABASE_URL", "postgresql://localhost/postgres")
    with psycopg.connect(url) as conn:
        placed = 0
        while count is None or placed < count:
            place_order(conn, total=10.0 + placed % 90)
            placed += 1
            time.sleep(interval_s)


if __name__ == "__main__":
    if sys.argv[1:] == ["setup"]:
        with psycopg.connect(os.environ["OUTBOX_RELAY_DATABASE_URL"]) as owner:
            setup(owner)
    elif sys.argv[1:] == ["produce"]:
        produce()
    else:
        sys.exit(__doc__)
