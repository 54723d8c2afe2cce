"""The down path: `migrate --drop` and `sql --drop` remove what `migrate` created, nothing
else, and `migrate` afterwards builds the same schema again."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from outbox_relay.cli import main
from tests.support.catalog import objects, snapshot
from tests.support.schemas import user_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def app_schema(database_url: str) -> Iterator[str]:
    """An application's schema with a table, a function and a sequence of its own."""
    with user_schema(
        database_url,
        "app",
        "CREATE TABLE {schema}.orders (id serial PRIMARY KEY, total int)",
        "INSERT INTO {schema}.orders (total) VALUES (7), (9)",
        "CREATE FUNCTION {schema}.order_total() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ) as name:
        yield name


def orders(database_url: str, schema: str) -> list[tuple[int, int]]:
    with psycopg.connect(database_url) as conn:
        query = sql.SQL("SELECT id, total FROM {}.orders ORDER BY id")
        return conn.execute(query.format(sql.Identifier(schema))).fetchall()


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_upgrade_drop_upgrade_leaves_the_users_objects_and_builds_the_same_schema(
    database_url: str, app_schema: str
) -> None:
    own = objects(database_url, app_schema)
    target = ["--database-url", database_url, "--schema", app_schema]

    code, _ = invoke("migrate", *target, "--wake-trigger")
    assert code == 0
    first = snapshot(database_url, app_schema)
    code, output = invoke("migrate", *target, "--drop", "--yes")
    assert code == 0, output
    assert objects(database_url, app_schema) == own
    assert orders(database_url, app_schema) == [(1, 7), (2, 9)]
    assert (
        "tables consumer_flow, inbox, outbox, outbox_listener, outbox_migrations, "
        "outbox_partitions, outbox_relays; functions outbox_notify, outbox_partition, outbox_wake. "
        "The schema itself is left in place."
    ) in output
    code, output = invoke("migrate", *target, "--wake-trigger")
    assert code == 0, output
    assert "created the outbox" in output

    assert snapshot(database_url, app_schema) == first


def test_the_printed_drop_run_by_hand_removes_the_same(database_url: str, app_schema: str) -> None:
    own = objects(database_url, app_schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(invoke("sql", "--schema", app_schema)[1].encode())
        conn.execute(invoke("sql", "--schema", app_schema, "--drop")[1].encode())
    assert objects(database_url, app_schema) == own
    assert orders(database_url, app_schema) == [(1, 7), (2, 9)]


def test_a_second_drop_finds_nothing_and_says_so(database_url: str, app_schema: str) -> None:
    code, output = invoke(
        "migrate", "--database-url", database_url, "--schema", app_schema, "--drop", "--yes"
    )
    assert code == 0, output
    assert f"schema {app_schema!r} holds no outbox: nothing dropped" in output


def test_an_object_of_the_users_that_depends_on_the_outbox_stops_the_drop(
    database_url: str, app_schema: str
) -> None:
    target = ["--database-url", database_url, "--schema", app_schema]
    assert invoke("migrate", *target)[0] == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE VIEW {}.pending AS SELECT id FROM {}.outbox").format(
                sql.Identifier(app_schema), sql.Identifier(app_schema)
            )
        )
    before = snapshot(database_url, app_schema)

    code, output = invoke("migrate", *target, "--drop", "--yes")

    assert code == 1
    assert f"(view {app_schema}.pending depends on table {app_schema}.outbox)" in output
    assert "Nothing was dropped" in output
    assert "no CASCADE" in output
    assert snapshot(database_url, app_schema) == before


def run_on_a_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """The CLI with a terminal on stdin and stdout, as a person runs it."""
    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "outbox_relay", *args],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        close_fds=True,
    )
    os.close(child_fd)
    seen = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(main_fd, answer + b"\n")
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(main_fd)
    return process.wait(timeout=30), seen.decode(errors="replace")


def test_migrate_drop_asks_on_a_terminal_first(database_url: str, app_schema: str) -> None:
    args = ["migrate", "--database-url", database_url, "--schema", app_schema]
    assert invoke(*args)[0] == 0
    migrated = objects(database_url, app_schema)

    code, output = run_on_a_terminal([*args, "--drop"], b"n")
    assert code == 1, output
    assert "Aborted" in output
    assert objects(database_url, app_schema) == migrated

    code, output = run_on_a_terminal([*args, "--drop"], b"y")
    assert code == 0, output
    assert "with every row in them" in output
    assert "The schema itself is left in place." in output
    assert ("table", "outbox") not in objects(database_url, app_schema)
