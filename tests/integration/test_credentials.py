"""Credentials: read from files (container secrets), never shown in output or logs."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from outbox_relay.cli import main
from tests.conftest import unique_name
from tests.integration.test_cli_run import interrupt_once_logged, start_relay

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-pw"  # noqa: S105 - a made-up password the tests look for in output


def secret_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secret"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_migrate_reads_the_database_url_from_a_file(database_url: str, tmp_path: Path) -> None:
    schema = unique_name("t")
    path = secret_file(tmp_path, database_url + "\n")
    try:
        result = CliRunner().invoke(
            main, ["migrate", "--schema", schema], env={"OUTBOX_RELAY_DATABASE_URL_FILE": str(path)}
        )
        assert result.exit_code == 0, result.output
        assert f"schema {schema!r}" in result.output
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "cannot read"),
        ("", [], "is empty"),
        (f"postgresql://u:{SECRET}@db/app\npostgresql://other", [], "more than one line"),
        ("postgresql://db/app", ["--database-url", "postgresql://x/y"], "give one"),
    ],
)
def test_a_bad_secret_file_is_refused_without_showing_its_content(
    tmp_path: Path, content: str | None, args: list[str], message: str
) -> None:
    path = tmp_path / "missing" if content is None else secret_file(tmp_path, content)
    result = CliRunner().invoke(
        main, ["migrate", "--database-url-file", str(path), *args], catch_exceptions=False
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert str(path) in result.output or message == "give one"
    assert SECRET not in result.output


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}@127.0.0.1:1/x",
        f"host=127.0.0.1 port=1 password={SECRET}",
        f"host=127.0.0.1 password=s3 {SECRET}",  # malformed: libpq quotes the second word
        f"postgresql://127.0.0.1:1/x?password={SECRET}",
    ],
)
def test_database_errors_never_show_the_password(url: str) -> None:
    result = CliRunner().invoke(main, ["migrate", "--database-url", url], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "error:" in result.output
    assert SECRET not in result.output


def test_a_malformed_database_url_is_a_usage_error_without_the_password() -> None:
    url = f"postgresql://u:{SECRET}@127.0.0.1:notaport/x"
    result = CliRunner().invoke(main, ["migrate", "--database-url", url], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "its port 'notaport' is not a number" in result.output
    assert SECRET not in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"amqp://guest:{SECRET}@127.0.0.1:notaport/%2F", "its port 'notaport' is not a number"),
        (f"amqp://guest:{SECRET}@127.0.0.1/%2F?heartbeat=abc", "Invalid heartbeat value"),
        (
            f"amqps://guest:{SECRET}@127.0.0.1/%2F?ssl_options=%7B%27ca_certs%27%3A%27/nope%27%7D",
            "cannot load the TLS files",
        ),
    ],
)
def test_a_bad_amqp_url_is_a_usage_error_without_the_password(
    database_url: str, url: str, message: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["run", "--database-url", database_url, "--amqp-url", url],
        catch_exceptions=False,
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert SECRET not in result.output


def test_run_reads_the_amqp_url_from_a_file_and_never_logs_it(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    path = secret_file(tmp_path, f"amqp://guest:{SECRET}@127.0.0.1:1/%2F\n")
    relay = start_relay(database_url, None, schema, env={"OUTBOX_RELAY_AMQP_URL_FILE": str(path)})
    stderr = interrupt_once_logged(relay, "relay.broker_unavailable")
    assert SECRET not in stderr
    records = [json.loads(line) for line in stderr.splitlines()]
    assert records[0]["broker"] == "amqp://guest:***@127.0.0.1:1/%2F"
    assert [r for r in records if r["event"] == "relay.broker_unavailable"]
