"""`outbox-relay consume`: usage mistakes exit 2 with the reason, before connecting."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from outbox_relay.cli import main


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        ("no_colon", "MODULE:ATTRIBUTE"),
        ("no_such_module_here:app", "cannot import module"),
        ("tests.support.consumer:effects", "not a ConsumerApp"),
    ],
)
def test_an_app_that_cannot_be_loaded_exits_2(app: str, reason: str) -> None:
    result = CliRunner().invoke(main, ["consume", app])
    assert result.exit_code == 2
    assert reason in result.output


def test_contradicting_settings_exit_2_before_connecting() -> None:
    result = CliRunner().invoke(
        main,
        ["consume", "tests.support.consumer_app:app", "--concurrency", "0"],
        env={"OUTBOX_RELAY_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert result.exit_code == 2
    assert "concurrency must be at least 1" in result.output
