"""One schema however it is built: the printed schema (`outbox-relay sql`, what a fresh
`migrate` applies), every migration of sql/migrations in order (what brings an older
schema forward), and the pre-release migrations 0000-0008 the baseline replaced."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

import outbox_relay
from outbox_relay.cli import main
from outbox_relay.errors import StoreError
from outbox_relay.store.schema import migrate
from outbox_relay.store.sqlfiles import Migration, Queries, migrations
from tests.support.catalog import snapshot
from tests.support.chain import apply_chain, prerelease_migrations, recorded_versions

pytestmark = pytest.mark.integration

BASELINE_VERSION = 8


@pytest.fixture
def new_schema(database_url: str) -> Iterator[Callable[[str], str]]:
    """Names of schemas that do not exist yet; each is dropped after the test."""
    names: list[str] = []

    def make(prefix: str) -> str:
        names.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def run_printed(database_url: str, *args: str) -> None:
    """What a DBA or a migration tool does with `outbox-relay sql`: run it as printed."""
    printed = CliRunner().invoke(main, ["sql", *args])
    assert printed.exit_code == 0, printed.output
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(printed.output.encode())


def after_baseline() -> list[Migration]:
    """The migrations added since the baseline (version 8)."""
    return [m for m in migrations() if m.version > BASELINE_VERSION]


@pytest.mark.parametrize("partitions", [16, 3])
def test_the_baseline_builds_what_the_prerelease_migrations_built(
    database_url: str, new_schema: Callable[[str], str], partitions: int
) -> None:
    old, printed = new_schema("old"), new_schema("printed")
    chain = prerelease_migrations() + after_baseline()
    apply_chain(database_url, old, chain, partitions=partitions)
    run_printed(database_url, "--schema", printed, "--partitions", str(partitions))
    assert snapshot(database_url, printed) == snapshot(database_url, old)


@pytest.mark.parametrize(("partitions", "wake_trigger"), [(16, False), (5, True)])
def test_every_migration_in_order_builds_what_the_printed_schema_builds(
    database_url: str, new_schema: Callable[[str], str], partitions: int, wake_trigger: bool
) -> None:
    """A migration added without the same change to sql/schema.sql (or the other way
    round) fails here."""
    chained, printed = new_schema("chained"), new_schema("printed")
    apply_chain(database_url, chained, migrations(), partitions=partitions)
    if wake_trigger:
        with psycopg.connect(database_url) as conn:
            conn.execute(Queries("migrate", schema=chained)["wake_trigger"])
    options = ["--partitions", str(partitions)] + (["--wake-trigger"] if wake_trigger else [])
    run_printed(database_url, "--schema", printed, *options)
    assert snapshot(database_url, printed) == snapshot(database_url, chained)
    assert recorded_versions(database_url, printed) == recorded_versions(database_url, chained)


def test_a_fresh_migrate_builds_the_printed_schema(
    database_url: str, new_schema: Callable[[str], str]
) -> None:
    migrated, printed = new_schema("migrated"), new_schema("printed")
    report = migrate(database_url, schema=migrated)
    assert report.created
    assert report.applied == ()
    assert report.version == migrations()[-1].version
    run_printed(database_url, "--schema", printed)
    assert snapshot(database_url, printed) == snapshot(database_url, migrated)
    assert recorded_versions(database_url, printed) == recorded_versions(database_url, migrated)


def test_a_schema_the_prerelease_migrations_brought_to_version_8_gets_only_the_later_ones(
    database_url: str, new_schema: Callable[[str], str]
) -> None:
    old, printed = new_schema("old"), new_schema("printed")
    apply_chain(database_url, old, prerelease_migrations(), partitions=16)
    later = [m.name for m in after_baseline()]
    listed = CliRunner().invoke(main, ["sql", "--schema", old, "--since-version", "8"])
    assert listed.exit_code == 0, listed.output
    assert all(f"migration {m[:4]}" in listed.output for m in later)
    assert "migration 0008" not in listed.output

    result = CliRunner().invoke(main, ["migrate", "--database-url", database_url, "--schema", old])

    assert result.exit_code == 0, result.output
    assert f"applied {', '.join(later)} to" in result.output
    run_printed(database_url, "--schema", printed)
    assert snapshot(database_url, old) == snapshot(database_url, printed)
    assert [v for v, _ in recorded_versions(database_url, old)] == [
        *range(1, 9),
        *(m.version for m in after_baseline()),
    ]
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(conn, exchange="e", routing_key="k", payload={}, schema=old)
        conn.commit()


def test_a_schema_part_way_through_the_prerelease_migrations_is_refused(
    database_url: str, new_schema: Callable[[str], str]
) -> None:
    """Its outbox still has the columns and the trigger that later migrations removed;
    the baseline on top would leave them and record version 8."""
    old = new_schema("old")
    apply_chain(database_url, old, prerelease_migrations(up_to=5), partitions=16)
    before = snapshot(database_url, old)

    with pytest.raises(StoreError, match=r"version 5 comes from a pre-release.*migrate --drop"):
        migrate(database_url, schema=old)

    assert snapshot(database_url, old) == before
    printed = CliRunner().invoke(main, ["sql", "--schema", old, "--since-version", "5"])
    assert printed.exit_code == 2
    assert "--since-version 5: version 5 comes from a pre-release" in printed.output
