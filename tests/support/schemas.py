"""Schemas of the application's own, for tests that put the outbox beside its tables."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql


@contextlib.contextmanager
def user_schema(url: str, prefix: str, *statements: str) -> Iterator[str]:
    """A new schema holding what ``statements`` create (``{schema}`` stands for its quoted
    name); dropped with everything in it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        for statement in statements:
            conn.execute(sql.SQL(statement).format(schema=ident))
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
