"""Click options shared by several ``outbox-relay`` commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from outbox_relay.logs import LOG_LEVELS
from outbox_relay.settings import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, DEFAULT_SCHEMA

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED = 1
EXIT_USAGE = 2


def database_url_option(func: F) -> F:
    return click.option(
        "--database-url",
        envvar="OUTBOX_RELAY_DATABASE_URL",
        default=DEFAULT_DATABASE_URL,
        show_default=True,
        show_envvar=True,
        help="PostgreSQL URL (libpq syntax).",
    )(func)


def amqp_url_option(func: F) -> F:
    return click.option(
        "--amqp-url",
        envvar="OUTBOX_RELAY_AMQP_URL",
        default=DEFAULT_AMQP_URL,
        show_default=True,
        show_envvar=True,
        help="RabbitMQ URL; the vhost is the path, '/' written as %2F.",
    )(func)


def schema_option(func: F) -> F:
    return click.option(
        "--schema",
        envvar="OUTBOX_RELAY_SCHEMA",
        default=DEFAULT_SCHEMA,
        show_default=True,
        show_envvar=True,
        help="Schema that holds the outbox table.",
    )(func)


def logging_options(func: F) -> F:
    func = click.option(
        "--log-level",
        envvar="OUTBOX_RELAY_LOG_LEVEL",
        type=click.Choice(list(LOG_LEVELS)),
        default="info",
        show_default=True,
        show_envvar=True,
    )(func)
    return click.option(
        "--log-format",
        envvar="OUTBOX_RELAY_LOG_FORMAT",
        type=click.Choice(["auto", "json", "console"]),
        default="auto",
        show_default=True,
        show_envvar=True,
        help="auto: console on a terminal, JSON lines otherwise.",
    )(func)
