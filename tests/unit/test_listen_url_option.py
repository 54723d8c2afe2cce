"""--listen-database-url: checked before anything connects, read from a file like the others."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from outbox_relay.cli import main
from outbox_relay.errors import ConfigurationError
from outbox_relay.relay import RelaySettings
from outbox_relay.settings import RunSettings


def settings(listen_database_url: str | None) -> RunSettings:
    return RunSettings(
        database_url="postgresql://app@pgbouncer:6432/app",
        amqp_url="amqp://guest:guest@localhost:5672/%2F",
        schema="public",
        relay=RelaySettings(),
        confirm_timeout_s=30,
        dead_peer_timeout_s=8,
        listen_database_url=listen_database_url,
    )


@pytest.mark.parametrize(
    "url", [None, "postgresql://app@db:5432/app", "host=db dbname=app user=app"]
)
def test_a_listen_url_is_optional_and_takes_libpq_syntax(url: str | None) -> None:
    assert settings(url).listen_database_url == url


def test_a_listen_url_that_is_no_postgresql_url_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match=r"^--listen-database-url: expected postgresql"):
        settings("amqp://guest@localhost/")


def test_the_listen_url_and_its_file_cannot_both_be_given(tmp_path: Path) -> None:
    secret = tmp_path / "listen_url"
    secret.write_text("postgresql://app@db:5432/app\n", encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["run", "--listen-database-url-file", str(secret)],
        env={"OUTBOX_RELAY_LISTEN_DATABASE_URL": "postgresql://app@db:5432/app"},
    )
    assert result.exit_code == 2
    assert "--listen-database-url and --listen-database-url-file were both given" in result.output
