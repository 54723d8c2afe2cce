"""Schemas of the application's own, for tests that put the outbox beside its tables."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo


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


@contextlib.contextmanager
def private_database(url: str, *, encoding: str = "UTF8") -> Iterator[str]:
    """The URL of a new database on the server ``url`` names, dropped afterwards: for
    tests that read server-wide state of their database (the order gate reads every
    writing transaction in it) or need another encoding."""
    name = f"t_db_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING {} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(ident, sql.Literal(encoding))
        )
    try:
        yield make_conninfo(url, dbname=name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
