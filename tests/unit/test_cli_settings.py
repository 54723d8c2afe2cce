"""`outbox-relay run` builds one RunSettings from its options and their variables."""

from __future__ import annotations

import os

import click
import pytest

from outbox_relay.cli.options import envvar
from outbox_relay.cli.run import run_settings_options
from outbox_relay.errors import ConfigurationError
from outbox_relay.relay import RelaySettings
from outbox_relay.settings import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, RunSettings
from outbox_relay.store.relay_store import ORDER_GATE_MAX_WAIT_S


@pytest.fixture(autouse=True)
def no_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: none of the OUTBOX_RELAY_* variables of the environment."""
    for name in [name for name in os.environ if name.startswith("OUTBOX_RELAY_")]:
        monkeypatch.delenv(name)


def settings_from(args: list[str]) -> RunSettings:
    """What the options (and the OUTBOX_RELAY_* variables set) make of the settings."""
    probe = click.command()(run_settings_options(lambda settings: settings))
    settings = probe.main(args, standalone_mode=False)
    assert isinstance(settings, RunSettings)
    return settings


def test_without_options_the_settings_are_the_defaults() -> None:
    settings = settings_from([])
    assert settings.relay == RelaySettings()
    assert (settings.database_url, settings.amqp_url, settings.schema) == (
        DEFAULT_DATABASE_URL,
        DEFAULT_AMQP_URL,
        "public",
    )
    assert settings.listen_database_url is None
    assert (settings.order_gate, settings.order_gate_max_wait_s) == (False, ORDER_GATE_MAX_WAIT_S)
    assert settings.dead_peer_timeout_s == settings.relay.lease_ttl_s


def test_the_order_gate_is_part_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(["--order-gate", "--order-gate-max-wait", "5"])
    assert (settings.order_gate, settings.order_gate_max_wait_s) == (True, 5.0)
    monkeypatch.setenv("OUTBOX_RELAY_ORDER_GATE", "1")
    monkeypatch.setenv("OUTBOX_RELAY_ORDER_GATE_MAX_WAIT", "7")
    from_env = settings_from([])
    assert (from_env.order_gate, from_env.order_gate_max_wait_s) == (True, 7.0)


def test_each_option_fills_its_field_from_the_flag_or_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_RELAY_RETRY_MAX", "60")
    monkeypatch.setenv("OUTBOX_RELAY_CONFIRM_TIMEOUT", "9")
    settings = settings_from(["--batch-size", "10", "--poll-interval", "0.25", "--lease-ttl", "20"])
    assert settings.relay.batch_size == 10
    assert settings.relay.poll_interval_s == 0.25
    assert settings.relay.lease_ttl_s == 20.0
    assert settings.relay.retry_max_s == 60.0
    assert settings.confirm_timeout_s == 9.0
    assert settings.dead_peer_timeout_s == 20.0  # --lease-ttl unless given
    assert settings_from(["--dead-peer-timeout", "0"]).dead_peer_timeout_s == 0


def test_contradicting_options_are_refused_before_the_command_runs() -> None:
    with pytest.raises(ConfigurationError, match="--retry-max must be at least --retry-base"):
        settings_from(["--retry-base", "10", "--retry-max", "5"])


@pytest.mark.parametrize(
    ("flag", "variable"),
    [
        ("--batch-size", "OUTBOX_RELAY_BATCH_SIZE"),
        ("--order-gate/--no-order-gate", "OUTBOX_RELAY_ORDER_GATE"),
        ("--database-url-file", "OUTBOX_RELAY_DATABASE_URL_FILE"),
    ],
)
def test_an_options_variable_is_named_after_its_flag(flag: str, variable: str) -> None:
    assert envvar(flag) == variable
