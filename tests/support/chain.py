"""Migrations applied one by one, as ``outbox-relay migrate`` brings an older schema
forward, and the pre-release migrations the baseline replaced."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import psycopg
from psycopg import sql

from outbox_relay.store.sqlfiles import Migration, compose

# Migrations 0000-0008 of outbox-relay before its first release, kept to prove that the
# baseline builds what they built and that a schema they brought to version 8 is current.
PRERELEASE_DIR = Path(__file__).resolve().parent / "prerelease_migrations"


def prerelease_migrations(*, up_to: int = 8) -> list[Migration]:
    """0000 (the bookkeeping table, never recorded) to ``up_to``, in order."""
    found = []
    for path in sorted(PRERELEASE_DIR.glob("*.sql")):
        version = int(path.name[:4])
        if version <= up_to:
            found.append(Migration(version, path.stem, path.read_text(encoding="utf-8")))
    return found


def apply_chain(url: str, schema: str, chain: Iterable[Migration], *, partitions: int) -> None:
    """Each migration in order, each recorded in the schema's outbox_migrations (but
    version 0), in one transaction."""
    record = sql.SQL("INSERT INTO {}.outbox_migrations (version, name) VALUES (%s, %s)").format(
        sql.Identifier(schema)
    )
    with psycopg.connect(url) as conn:
        for migration in chain:
            conn.execute(compose(migration.text, schema=schema, partitions=partitions))
            if migration.version:
                conn.execute(record, [migration.version, migration.name])


def recorded_versions(url: str, schema: str) -> list[tuple[int, str]]:
    query = sql.SQL("SELECT version, name FROM {}.outbox_migrations ORDER BY version")
    with psycopg.connect(url) as conn:
        return conn.execute(query.format(sql.Identifier(schema))).fetchall()
