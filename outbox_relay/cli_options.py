"""Click options shared by several ``outbox-relay`` commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from outbox_relay.logs import LOG_LEVELS

F = TypeVar("F", bound=Callable[..., Any])


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
