"""The ``outbox-relay`` command.

Exit codes: 0 success (and a clean stop on SIGTERM/SIGINT); 1 the operation failed (the
message says what and what to do); 2 bad usage or configuration; 3 a service refused the
configuration at start in a way no retry fixes (login or permissions refused, a database,
role or vhost that does not exist, TLS refused, the outbox's tables missing): one line
names the URL, the cause and the fix.

One module per command (or group of commands); :mod:`outbox_relay.cli.options` declares
their options, :mod:`outbox_relay.cli.net` those that say how to reach the services.
"""

from __future__ import annotations

import json
from typing import Any

import click

from outbox_relay.cli.consume import consume
from outbox_relay.cli.dead_letters import dead_letters
from outbox_relay.cli.failed import failed
from outbox_relay.cli.net import database_url_option, given_url
from outbox_relay.cli.options import EXIT_FAILED, EXIT_MISCONFIGURED, schema_option
from outbox_relay.cli.run import run
from outbox_relay.cli.schema import migrate, print_sql
from outbox_relay.cli.topology import topology
from outbox_relay.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MisconfiguredError,
    OutboxRelayError,
    StoreError,
    StoreUnavailableError,
)
from outbox_relay.status_view import render_status
from outbox_relay.store.status import read_status


class _Group(click.Group):
    """Turns our errors into one line on stderr and the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.UsageError(str(exc), ctx) from exc
        except OutboxRelayError as exc:
            line, code = _error_line(exc)
            click.echo(f"error: {line}", err=True)
            ctx.exit(code)


def _error_line(exc: OutboxRelayError) -> tuple[str, int]:
    """What failed and what to do, on one line, and the exit code that goes with it."""
    if isinstance(exc, MisconfiguredError):
        return _refusal_line(exc), EXIT_MISCONFIGURED
    if isinstance(exc, StoreError):
        return _store_hint(exc), EXIT_FAILED
    if isinstance(exc, BrokerUnavailableError):
        return f"{_one_line(exc)}; {_BROKER_HINT}", EXIT_FAILED
    return str(exc), EXIT_FAILED


_DATABASE_HINT = (
    "check that PostgreSQL runs at that address and that --database-url "
    "(OUTBOX_RELAY_DATABASE_URL) names the right host, port, database, user and password"
)
_BROKER_HINT = (
    "check that RabbitMQ runs at that address and that --amqp-url (OUTBOX_RELAY_AMQP_URL) "
    "names the right host, port, vhost (as %2F for '/'), user and password"
)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _refusal_line(exc: MisconfiguredError) -> str:
    """One line that names the URL (redacted), the cause and the fix."""
    text = _one_line(exc)
    url = given_url("database_url" if isinstance(exc, StoreError) else "amqp_url")
    if url and url not in text:
        return f"{url}: {text}"
    return text


def _store_hint(exc: StoreError) -> str:
    text = _one_line(exc)
    if isinstance(exc, StoreUnavailableError):
        return f"{text}; {_DATABASE_HINT}"
    return text


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outbox-relay")
def main() -> None:
    """Transactional outbox relay for PostgreSQL and RabbitMQ."""


@main.command()
@database_url_option
@schema_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def status(database_url: str, schema: str, as_json: bool) -> None:
    """Backlog, oldest pending age, dead rows, live relays and their partitions."""
    report = read_status(database_url, schema=schema)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    click.echo(render_status(report))


for command in (migrate, print_sql, run, consume, topology, failed, dead_letters):
    main.add_command(command)
