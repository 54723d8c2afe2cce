"""Migrations: idempotent, in any existing schema, touching nothing else; printed DDL matches."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import outbox_relay
from outbox_relay.store.schema import grants_sql, migrate, schema_sql
from outbox_relay.store.sqlfiles import Migration, migrations
from tests.support.schemas import user_schema

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox_relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def app_schema(database_url: str) -> Iterator[str]:
    """An application's existing schema with a table of its own in it."""
    with user_schema(
        database_url,
        "app",
        "CREATE TABLE {schema}.orders (id int PRIMARY KEY, total numeric)",
        "INSERT INTO {schema}.orders VALUES (1, 9.5), (2, 3)",
    ) as name:
        yield name


def tables(database_url: str, schema: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            [schema],
        ).fetchall()
    return [r[0] for r in rows]


def test_migrate_twice_into_an_existing_schema_leaves_its_tables_alone(
    database_url: str, app_schema: str
) -> None:
    first = cli("migrate", "--database-url", database_url, "--schema", app_schema)
    second = cli("migrate", "--database-url", database_url, "--schema", app_schema)
    assert first.returncode == 0, first.stderr
    assert f"created the outbox (version {migrations()[-1].version})" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert tables(database_url, app_schema) == [
        "consumer_flow",
        "inbox",
        "orders",
        "outbox",
        "outbox_listener",
        "outbox_migrations",
        "outbox_partitions",
        "outbox_relays",
    ]
    with psycopg.connect(database_url) as conn:
        orders = conn.execute(
            sql.SQL("SELECT id, total FROM {}.orders ORDER BY id").format(
                sql.Identifier(app_schema)
            )
        ).fetchall()
    assert [(i, float(t)) for i, t in orders] == [(1, 9.5), (2, 3.0)]


def test_printed_sql_applied_by_hand_then_migrate_is_a_no_op(
    database_url: str, app_schema: str
) -> None:
    printed = cli("sql", "--schema", app_schema)
    assert printed.returncode == 0, printed.stderr
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(printed.stdout)  # type: ignore[call-overload]  # what a DBA would run
    report = migrate(database_url, schema=app_schema)
    assert report.applied == ()
    assert not report.created
    assert report.already == tuple(m.name for m in migrations())
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(conn, exchange="e", routing_key="k", payload={}, schema=app_schema)
        conn.commit()


def test_a_hostile_schema_name_is_quoted_not_executed(database_url: str) -> None:
    hostile = 'x"; DROP TABLE canary; --'
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.canary_outbox_relay (id int)")
    try:
        migrate(database_url, schema=hostile)
        with psycopg.connect(database_url) as conn:
            outbox_relay.publish(conn, exchange="e", routing_key="k", payload={}, schema=hostile)
            conn.commit()
        assert "outbox" in tables(database_url, hostile)
        assert "canary_outbox_relay" in tables(database_url, "public")
        assert 'CREATE SCHEMA IF NOT EXISTS "x""; DROP TABLE canary; --"' in schema_sql(
            schema=hostile
        )
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(hostile))
            )
            conn.execute("DROP TABLE IF EXISTS public.canary_outbox_relay")


def test_migrate_explains_an_unreachable_database() -> None:
    result = cli("migrate", "--database-url", "postgresql://nobody:secret@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "database unavailable" in result.stderr
    assert "secret" not in result.stderr


def test_run_without_migrate_says_so(database_url: str, amqp_url: str) -> None:
    result = cli(
        "run",
        "--database-url",
        database_url,
        "--amqp-url",
        amqp_url,
        "--schema",
        f"none_{uuid.uuid4().hex[:6]}",
        "--log-format",
        "json",
    )
    assert result.returncode == 3  # a misconfiguration no retry fixes
    assert "outbox-relay migrate" in result.stderr


def test_printed_sql_is_safe_with_a_newline_in_the_schema_name(database_url: str) -> None:
    """Placeholders never sit in comments: a newline in a quoted name cannot end one."""
    canary = "canary_outbox_relay_nl"
    hostile = f"x\nDROP TABLE public.{canary}; --"
    with psycopg.connect(database_url, autocommit=True) as conn:
        create = sql.SQL("CREATE TABLE IF NOT EXISTS public.{} (id int)")
        conn.execute(create.format(sql.Identifier(canary)))
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(schema_sql(schema=hostile))  # type: ignore[call-overload]
            row = conn.execute("SELECT current_user").fetchone()
            assert row is not None
            grants = grants_sql(schema=hostile, roles=[("relay", row[0]), ("producer", row[0])])
            conn.execute(grants)  # type: ignore[call-overload]
        assert "outbox" in tables(database_url, hostile)
        assert canary in tables(database_url, "public")
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(hostile))
            )
            conn.execute(sql.SQL("DROP TABLE IF EXISTS public.{}").format(sql.Identifier(canary)))


def test_a_later_migration_is_applied_once_and_printed_since_the_version_before(
    database_url: str, app_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machinery for the migrations after the baseline: `migrate` applies what a
    schema lacks, `sql --since-version` prints it, a fresh schema records it."""
    migrate(database_url, schema=app_schema)
    last = migrations()[-1].version
    version, name = last + 1, f"{last + 1:04d}_exchange_idx"
    later = Migration(
        version, name, "CREATE INDEX IF NOT EXISTS x_idx ON {schema}.outbox (exchange);"
    )
    chain = (*migrations(), later)
    monkeypatch.setattr("outbox_relay.store.schema.migrations", lambda: chain)

    report = migrate(database_url, schema=app_schema)
    again = migrate(database_url, schema=app_schema)

    assert (report.created, report.applied, report.version) == (False, (name,), version)
    assert (again.applied, again.already) == ((), tuple(m.name for m in chain))
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'x_idx'",
            [app_schema],
        ).fetchall()
    assert len(found) == 1
    printed = schema_sql(schema=app_schema, since_version=last)
    assert printed.startswith(f'CREATE INDEX IF NOT EXISTS x_idx ON "{app_schema}".outbox')
    assert f"VALUES ({version}, '{name}')" in printed
    assert f"VALUES ({last}," not in printed
    assert "VALUES (8, '0008_baseline')" in schema_sql(schema=app_schema)
    assert f"VALUES ({version}, '{name}')" in schema_sql(schema=app_schema)
