"""The outbox in an application's Alembic history: a revision whose upgrade runs what
`outbox-relay sql` printed and whose downgrade runs what `outbox-relay sql --drop` printed,
both pasted into the revision, as the documentation tells."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command as alembic_command
from alembic.config import Config
from click.testing import CliRunner

import outbox_relay
from outbox_relay.cli import main
from tests.support.catalog import objects, snapshot
from tests.support.schemas import user_schema

pytestmark = pytest.mark.integration

ENV = """
from alembic import context
from sqlalchemy import create_engine

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(
        connection=connection, version_table_schema=config.get_main_option("app_schema")
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

REVISION = '''
"""The transactional outbox (outbox-relay)."""

from alembic import op

revision = "0001_outbox"
down_revision = None

# outbox-relay sql --schema {schema}
OUTBOX = {outbox!r}

# outbox-relay sql --schema {schema} --drop
OUTBOX_DROP = {drop!r}


def upgrade():
    op.execute(OUTBOX)


def downgrade():
    op.execute(OUTBOX_DROP)
'''


def printed(*args: str) -> str:
    result = CliRunner().invoke(main, ["sql", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def app_schema(database_url: str) -> Iterator[str]:
    """The application's own schema, with a table of its own and Alembic's version table."""
    with user_schema(
        database_url, "alembic", "CREATE TABLE {schema}.customers (id int PRIMARY KEY)"
    ) as name:
        yield name


def alembic(database_url: str, schema: str, tmp_path: Path) -> Config:
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV, encoding="utf-8")
    revision = REVISION.format(
        schema=schema,
        outbox=printed("--schema", schema),
        drop=printed("--schema", schema, "--drop"),
    )
    (scripts / "versions" / "0001_outbox.py").write_text(revision, encoding="utf-8")
    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.set_main_option(
        "sqlalchemy.url", database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    config.set_main_option("app_schema", schema)
    return config


def test_upgrade_downgrade_upgrade_through_alembic(
    database_url: str, app_schema: str, tmp_path: Path
) -> None:
    config = alembic(database_url, app_schema, tmp_path)
    before = objects(database_url, app_schema)

    alembic_command.upgrade(config, "head")
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(conn, exchange="e", routing_key="k", payload={}, schema=app_schema)
        conn.commit()
    first = snapshot(database_url, app_schema)

    alembic_command.downgrade(config, "base")
    left = objects(database_url, app_schema)
    assert ("relation", "alembic_version") in left
    assert {o for o in left if not o[1].startswith(("alembic_version", "_alembic_version"))} == (
        before
    )

    alembic_command.upgrade(config, "head")
    assert snapshot(database_url, app_schema) == first
