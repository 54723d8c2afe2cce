"""What a chain of services A -> B -> C left in the database, stage by stage.

Stage B is the guide's invoicing link (docs/examples/invoicing.py, or a handler built on
it): for each order it writes an invoice (order, customer, the id of its downstream
message) and publishes ``invoice.created`` through the outbox, in its inbox transaction.
Stage C records one effect per message it handles (tests/support/consumer_app.py, in the
``effects`` table of tests/support/consumer.py), keyed by message id. Shared by the
fault tier's chain (tests/faults/test_chain.py) and the cluster tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tests.support.faults import Tally


def with_search_path(database_url: str, schema: str) -> str:
    """``database_url`` with the search path set to ``schema``: the invoicing example
    names its table without a schema."""
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}options=-csearch_path%3D{schema}"


def chain_rows(database_url: str, schema: str) -> tuple[list[tuple[Any, ...]], list[str], set[str]]:
    """B's invoices (order, customer, message id) and C's effects' message ids, each in
    the order they were committed, and the notes C's handler left on its effects."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        invoices = conn.execute(
            sql.SQL("SELECT order_id, customer, message_id FROM {} ORDER BY id").format(
                sql.Identifier(schema, "invoices")
            )
        ).fetchall()
        effects = conn.execute(
            sql.SQL("SELECT message_id, note FROM {} ORDER BY id").format(
                sql.Identifier(schema, "effects")
            )
        ).fetchall()
    return invoices, [row[0] for row in effects], {row[1] for row in effects}


@dataclass
class ChainTally:
    """B's invoices and C's effects against the orders expected."""

    orders: Tally  # B: each invoice as {"n": order, "key": customer}, in commit order
    handled: Tally  # C: each effect as its invoice's order, in commit order
    downstream: dict[str, tuple[int, str]]  # invoice.created message id -> (order, customer)
    effects: list[str]  # C's effects' message ids, in commit order
    notes: set[str]  # what C's handler noted on its effects ("started", "started async")


def chain_tally(database_url: str, schema: str, expected: set[int]) -> ChainTally:
    invoices, effects, notes = chain_rows(database_url, schema)
    orders = Tally(expected=set(expected))
    orders.received.extend({"n": order, "key": customer} for order, customer, _ in invoices)
    downstream = {message_id: (order, customer) for order, customer, message_id in invoices}
    handled = Tally(expected=set(expected))
    handled.received.extend(
        {"n": downstream[m][0], "key": downstream[m][1]} for m in effects if m in downstream
    )
    return ChainTally(
        orders=orders, handled=handled, downstream=downstream, effects=effects, notes=notes
    )
