"""The baseline schema (sql/schema.sql) builds what migrations 0000-0008 built."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from outbox_relay.store.schema import migrate
from outbox_relay.store.sqlfiles import compose, sql_dir
from tests.support.catalog import snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
def schemas(database_url: str) -> Iterator[tuple[str, str]]:
    names = (f"chain_{uuid.uuid4().hex[:8]}", f"base_{uuid.uuid4().hex[:8]}")
    yield names
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.mark.parametrize("partitions", [16, 3])
def test_the_baseline_builds_what_the_chain_built(
    database_url: str, schemas: tuple[str, str], partitions: int
) -> None:
    chain, base = schemas
    migrate(database_url, schema=chain, partitions=partitions)
    text = (sql_dir() / "schema.sql").read_text(encoding="utf-8")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(compose(text, schema=base, partitions=partitions))
    assert snapshot(database_url, base) == snapshot(database_url, chain)
