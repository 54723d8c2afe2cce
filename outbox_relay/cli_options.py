"""Options shared by the ``outbox-relay`` commands, each with its ``OUTBOX_RELAY_*`` variable."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from click.core import ParameterSource

from outbox_relay.durations import parse_duration_ms
from outbox_relay.errors import ConfigurationError
from outbox_relay.logs import LOG_LEVELS
from outbox_relay.misconfiguration import UNHEALTHY_AFTER_S
from outbox_relay.relay.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS
from outbox_relay.settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    DEFAULT_SCHEMA,
    read_secret_file,
)
from outbox_relay.store.deadline import DB_TIMEOUT_S
from outbox_relay.store.sqlfiles import validate_schema_name
from outbox_relay.urls import redact_url, url_problem

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED = 1
EXIT_USAGE = 2
# A service refused the configuration: a retry cannot help (see outbox_relay.misconfiguration).
EXIT_MISCONFIGURED = 3


def given_url(name: str) -> str | None:
    """The redacted URL the running command was given as ``--NAME`` (for error lines)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(f"outbox_relay.{name}") if ctx is not None else None


def database_url_option(func: F) -> F:
    return url_option(
        func,
        name="database_url",
        envvar="OUTBOX_RELAY_DATABASE_URL",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL URL (libpq syntax).",
    )


def amqp_url_option(func: F) -> F:
    return url_option(
        func,
        name="amqp_url",
        envvar="OUTBOX_RELAY_AMQP_URL",
        default=DEFAULT_AMQP_URL,
        help=AMQP_URL_HELP,
        multiple=True,
    )


def listen_database_url_option(func: F) -> F:
    return url_option(
        func,
        name="listen_database_url",
        envvar="OUTBOX_RELAY_LISTEN_DATABASE_URL",
        default=None,
        help="PostgreSQL URL used only to LISTEN for new rows, direct or through a "
        "session-mode pool, for when --database-url goes through a transaction-mode pooler "
        "(where LISTEN cannot work and the relay polls every 100 ms instead).",
    )


AMQP_URL_HELP = (
    "RabbitMQ URL; the vhost is the path, '/' written as %2F. A cluster: repeat the option, "
    "or separate URLs with commas (whitespace in the variable), or list hosts in one URL "
    "(amqp://user:password@host1:5672,host2:5672/vhost); each connection tries the nodes in "
    "turn, starting after the one used last."
)


def url_option(
    func: F,
    *,
    name: str,
    envvar: str,
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

    @functools.wraps(func)
    def resolved(*args: Any, **kwargs: Any) -> Any:
        path = kwargs.pop(file_param)
        if path is not None:
            source = click.get_current_context().get_parameter_source(name)
            if source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
                raise ConfigurationError(
                    f"{flag} and {flag}-file were both given ({envvar} or {envvar}_FILE); give one"
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

    with_file = click.option(
        f"{flag}-file",
        file_param,
        envvar=f"{envvar}_FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        show_envvar=True,
        help=f"File holding the URL (e.g. a container secret), instead of {flag}.",
    )(resolved)
    return cast(
        F,
        click.option(
            flag,
            name,
            envvar=envvar,
            default=(default,) if multiple and default is not None else default,
            multiple=multiple,
            show_default=default if multiple and default is not None else True,
            show_envvar=True,
            help=help,
        )(with_file),
    )


def schema_option(func: F) -> F:
    return click.option(
        "--schema",
        envvar="OUTBOX_RELAY_SCHEMA",
        default=DEFAULT_SCHEMA,
        show_default=True,
        show_envvar=True,
        help="Schema that holds the outbox table.",
        callback=_valid_schema,
    )(func)


def _valid_schema(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return validate_schema_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def partitions_option(func: F) -> F:
    return click.option(
        "--partitions",
        envvar="OUTBOX_RELAY_PARTITIONS",
        type=click.IntRange(1, MAX_PARTITIONS),
        default=DEFAULT_PARTITIONS,
        show_default=True,
        show_envvar=True,
        help="Partitions that relays share (fixed when the outbox is created).",
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


# click >= 8.2 makes ParamType generic; subscripting it would break older clicks at runtime.
class Duration(click.ParamType):  # type: ignore[type-arg]
    """A duration such as 10m, 2h or 7d (or plain seconds), as seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration_ms(value) / 1000
        except (TypeError, ValueError) as exc:
            self.fail(str(exc), param, ctx)


def duration_option(*names: str, help: str) -> Callable[[F], F]:
    return click.option(*names, type=Duration(), default=None, help=help)


def http_options(func: F) -> F:
    func = click.option(
        "--http-port",
        envvar="OUTBOX_RELAY_HTTP_PORT",
        type=click.IntRange(0, 65535),
        default=0,
        show_default=True,
        show_envvar=True,
        help="Serve /healthz, /readyz and /metrics on this port; 0 turns it off.",
    )(func)
    return click.option(
        "--http-host",
        envvar="OUTBOX_RELAY_HTTP_HOST",
        default="0.0.0.0",  # noqa: S104 - probes reach a pod on its own address
        show_default=True,
        show_envvar=True,
        help="Address the HTTP endpoints listen on.",
    )(func)


def db_timeout_option(*, default: float | None) -> Callable[[F], F]:
    """``--db-timeout``: the deadline of each round trip to PostgreSQL (None: the app's)."""
    return click.option(
        "--db-timeout",
        envvar="OUTBOX_RELAY_DB_TIMEOUT",
        type=float,
        default=default,
        show_default=default is not None,
        show_envvar=True,
        help="Seconds PostgreSQL may take to answer one statement, commit or notification "
        "check before the connection counts as dead: it is closed, a warning is logged, and "
        "a new connection replaces it. 0 waits for ever."
        + ("" if default is not None else f" Default: {DB_TIMEOUT_S:g}."),
    )


def unhealthy_after_option(func: F) -> F:
    return click.option(
        "--unhealthy-after",
        envvar="OUTBOX_RELAY_UNHEALTHY_AFTER",
        type=click.FloatRange(min=0, min_open=True),
        default=UNHEALTHY_AFTER_S,
        show_default=True,
        show_envvar=True,
        help="Seconds the database or the broker may refuse the configuration (a "
        "rotated password, a dropped role or vhost, TLS refused) while running before "
        "/healthz fails; meanwhile it is retried and logged. At start such a refusal "
        "ends the process with exit code 3.",
    )(func)


def yes_option(func: F) -> F:
    return click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(func)


def json_option(help: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def limit_option(default: int | None, help: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--limit", type=click.IntRange(1), default=default, show_default=True, help=help
    )


def confirm(action: str, what: str, *, yes: bool) -> None:
    """Ask "ACTION WHAT?" unless ``yes``; a "no" (or no terminal) aborts with exit code 1."""
    if not yes:
        click.confirm(f"{action} {what}?", abort=True)


def progress(verb: str) -> Callable[[int], None]:
    """A progress callback printing "VERB N ..." to stderr."""

    def report(done: int) -> None:
        click.echo(f"  {verb} {done} ...", err=True)

    return report
