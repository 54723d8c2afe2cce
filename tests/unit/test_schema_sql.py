"""The printed DDL and its down path, and what `sql` and `migrate` refuse before connecting."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import outbox_relay
from outbox_relay.cli import main
from outbox_relay.store.schema import drop_sql, schema_sql
from outbox_relay.store.sqlfiles import migrations

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


class TestSchemaSql:
    def test_a_fresh_install_undoes_nothing(self) -> None:
        """No statement drops or alters what an earlier one created: the schema is built in
        one pass."""
        text = schema_sql(schema="s")
        assert "DROP " not in text
        assert "ALTER " not in text

    def test_it_records_every_migration(self) -> None:
        text = schema_sql(schema="s")
        recorded = re.findall(r"VALUES \((\d+), '(\w+)'\)", text)
        assert recorded == [(str(m.version), m.name) for m in migrations()]

    def test_the_wake_trigger_comes_last(self) -> None:
        text = schema_sql(schema="s", wake_trigger=True)
        assert text.endswith('FOR EACH STATEMENT EXECUTE FUNCTION "s".outbox_notify();\n')
        assert text.count("DROP ") == 1  # DROP TRIGGER IF EXISTS, so that it can run again

    def test_since_the_newest_version_there_is_nothing_to_apply(self) -> None:
        newest = migrations()[-1].version
        assert schema_sql(schema="s", since_version=newest) == (
            f"-- Nothing to apply: version {newest} is the newest.\n"
        )

    def test_the_python_api_gives_the_same_text_as_the_cli(self) -> None:
        for args, text in [
            (["sql", "--schema", "app"], outbox_relay.schema_sql(schema="app")),
            (["sql", "--schema", "app", "--drop"], outbox_relay.drop_sql(schema="app")),
        ]:
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
            assert result.output == text


class TestDropSql:
    def test_it_drops_without_cascade_and_leaves_the_schema(self) -> None:
        text = drop_sql(schema="app")
        statements = [s.strip() for s in re.sub(r"--[^\n]*", "", text).split(";") if s.strip()]
        assert [s.split()[:2] for s in statements] == [
            ["DROP", "TABLE"],
            ["DROP", "FUNCTION"],
            ["DROP", "TABLE"],
        ]
        assert all(s.endswith("RESTRICT") for s in statements)
        assert "CASCADE" not in re.sub(r"--[^\n]*", "", text)
        assert "SCHEMA" not in re.sub(r"--[^\n]*", "", text)

    def test_it_names_every_table_and_function_the_schema_creates(self) -> None:
        created = schema_sql(schema="app")
        tables = set(re.findall(r'CREATE (?:UNLOGGED )?TABLE IF NOT EXISTS "app"\.(\w+)', created))
        functions = set(re.findall(r'CREATE OR REPLACE FUNCTION "app"\.(\w+)\(', created))
        dropped = drop_sql(schema="app")
        assert tables == {
            "outbox",
            "outbox_listener",
            "outbox_relays",
            "outbox_partitions",
            "inbox",
            "consumer_flow",
            "outbox_migrations",
        }
        for name in tables | functions:
            assert f'"app".{name}' in dropped

    def test_a_hostile_schema_name_stays_quoted(self) -> None:
        assert '"x""; DROP SCHEMA public; --".outbox,' in drop_sql(
            schema='x"; DROP SCHEMA public; --'
        )


class TestRefusals:
    @pytest.mark.parametrize(
        "extra", [["--grants", "relay=r"], ["--wake-trigger"], ["--since-version", "8"]]
    )
    def test_sql_drop_takes_no_other_output_option(self, extra: list[str]) -> None:
        result = CliRunner().invoke(main, ["sql", "--drop", *extra])
        assert result.exit_code == 2
        assert "--drop prints the statements that remove the whole outbox" in result.output

    def test_a_version_before_the_baseline_is_refused_with_the_fix(self) -> None:
        result = CliRunner().invoke(main, ["sql", "--since-version", "7"])
        assert result.exit_code == 2
        assert "--since-version 7: version 7 comes from a pre-release" in result.output
        assert "outbox-relay sql --drop" in result.output

    def test_migrate_drop_without_a_terminal_asks_for_yes(self) -> None:
        result = CliRunner().invoke(main, ["migrate", "--database-url", UNREACHABLE, "--drop"])
        assert result.exit_code == 2
        assert "no terminal to ask on: pass --yes" in result.output

    def test_migrate_yes_without_drop_is_refused(self) -> None:
        result = CliRunner().invoke(main, ["migrate", "--database-url", UNREACHABLE, "--yes"])
        assert result.exit_code == 2
        assert "--yes confirms --drop" in result.output

    def test_migrate_drop_with_wake_trigger_is_refused(self) -> None:
        result = CliRunner().invoke(
            main, ["migrate", "--database-url", UNREACHABLE, "--drop", "--yes", "--wake-trigger"]
        )
        assert result.exit_code == 2
        assert "leave --wake-trigger out" in result.output
