"""The options that say how to reach PostgreSQL and RabbitMQ: the URLs (TLS included, as
``sslmode=`` or ``amqps://``), given directly or in a file, and when a connection counts
as dead."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click
from click.core import ParameterSource

from outbox_relay.cli.options import F, env_option, envvar
from outbox_relay.errors import ConfigurationError
from outbox_relay.settings import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, read_secret_file
from outbox_relay.store.deadline import DB_TIMEOUT_S
from outbox_relay.urls import redact_url, url_problem

AMQP_URL_HELP = (
    "RabbitMQ URL; the vhost is the path, '/' written as %2F. A cluster: repeat the option, "
    "or separate URLs with commas (whitespace in the variable), or list hosts in one URL "
    "(amqp://user:password@host1:5672,host2:5672/vhost); each connection tries the nodes in "
    "turn, starting after the one used last."
)
DEAD_PEER_HELP = (
    "Seconds after which a silent or unresponsive connection to PostgreSQL or "
    "RabbitMQ counts as dead (TCP keepalives and TCP_USER_TIMEOUT); 0 leaves the "
    "operating system's defaults. Default: "
)


def given_url(name: str) -> str | None:
    """The redacted URL the running command was given as ``--NAME`` (for error lines)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(f"outbox_relay.{name}") if ctx is not None else None


def url_option(
    func: F,
    *,
    name: str,
    default: str | None,
    help: str,
    multiple: bool = False,
) -> F:
    """``--NAME`` and ``--NAME-file``: a URL that may carry a password, given directly or
    read from a file (a container secret), so it need not sit in the environment.
    ``multiple``: the option may be repeated (several broker nodes); the command gets the
    URLs joined with commas, the form :mod:`outbox_relay.amqp_nodes` reads."""
    flag = "--" + name.replace("_", "-")
    file_param = f"{name}_file"
    variable = envvar(flag)

    @functools.wraps(func)
    def resolved(*args: Any, **kwargs: Any) -> Any:
        path = kwargs.pop(file_param)
        if path is not None:
            source = click.get_current_context().get_parameter_source(name)
            if source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
                raise ConfigurationError(
                    f"{flag} and {flag}-file were both given ({variable} or {variable}_FILE); "
                    "give one"
                )
            kwargs[name] = read_secret_file(path, option=f"{flag}-file")
        if multiple and not isinstance(kwargs.get(name), str):
            kwargs[name] = ",".join(kwargs[name]) or default
        url = kwargs.get(name)
        problem = url_problem(url) if url else None
        if url and problem:
            raise ConfigurationError(f"{flag} {redact_url(url)}: {problem}")
        if url:
            click.get_current_context().meta[f"outbox_relay.{name}"] = redact_url(url)
        return func(*args, **kwargs)

    with_file = env_option(
        f"{flag}-file",
        file_param,
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"File holding the URL (e.g. a container secret), instead of {flag}.",
    )(resolved)
    return cast(
        F,
        click.option(
            flag,
            name,
            envvar=variable,
            default=(default,) if multiple and default is not None else default,
            multiple=multiple,
            show_default=default if multiple and default is not None else True,
            show_envvar=True,
            help=help,
        )(with_file),
    )


def database_url_option(func: F) -> F:
    return url_option(
        func,
        name="database_url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL URL (libpq syntax).",
    )


def amqp_url_option(func: F) -> F:
    return url_option(
        func, name="amqp_url", default=DEFAULT_AMQP_URL, help=AMQP_URL_HELP, multiple=True
    )


def listen_database_url_option(func: F) -> F:
    return url_option(
        func,
        name="listen_database_url",
        default=None,
        help="PostgreSQL URL used only to LISTEN for new rows, direct or through a "
        "session-mode pool, for when --database-url goes through a transaction-mode pooler "
        "(where LISTEN cannot work and the relay polls every 100 ms instead).",
    )


def dead_peer_timeout_option(*, default_said: str) -> Callable[[F], F]:
    """``--dead-peer-timeout``, as ``dead_peer_timeout_s``, None when not given:
    ``default_said`` ends its help with what the default then is."""
    return env_option(
        "--dead-peer-timeout",
        "dead_peer_timeout_s",
        type=float,
        default=None,
        help=DEAD_PEER_HELP + default_said,
    )


def db_timeout_option(*, default: float | None) -> Callable[[F], F]:
    """``--db-timeout``, as ``db_timeout_s``: the deadline of each round trip to
    PostgreSQL (None: the app's)."""
    return env_option(
        "--db-timeout",
        "db_timeout_s",
        type=float,
        default=default,
        help="Seconds PostgreSQL may take to answer one statement, commit or notification "
        "check before the connection counts as dead: it is closed, a warning is logged, and "
        "a new connection replaces it. 0 waits for ever."
        + ("" if default is not None else f" Default: {DB_TIMEOUT_S:g}."),
    )
