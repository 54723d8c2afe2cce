"""How the ``outbox-relay`` commands declare their options, and the options they share.

An option that a deployment sets is declared once with :func:`env_option`: its flag, the
``OUTBOX_RELAY_*`` variable named after the flag, its default and its help, and, where it
fills a settings object, the field it fills (the command then gets it under that name).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from outbox_relay.durations import parse_duration_ms
from outbox_relay.logs import LOG_LEVELS
from outbox_relay.relay.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS
from outbox_relay.settings import DEFAULT_SCHEMA
from outbox_relay.store.sqlfiles import validate_schema_name

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED = 1
EXIT_USAGE = 2
# A service refused the configuration: a retry cannot help (see outbox_relay.misconfiguration).
EXIT_MISCONFIGURED = 3
ENV_PREFIX = "OUTBOX_RELAY_"


def envvar(flag: str) -> str:
    """The variable that sets ``flag``: ``--batch-size`` is ``OUTBOX_RELAY_BATCH_SIZE``."""
    name = flag.split("/", maxsplit=1)[0].removeprefix("--")
    return ENV_PREFIX + name.upper().replace("-", "_")


def env_option(
    flag: str,
    field: str | None = None,
    *,
    default: Any,
    help: str | None,
    type: Any = None,
    **extra: Any,
) -> Callable[[F], F]:
    """``flag``, also read from its ``OUTBOX_RELAY_*`` variable; --help shows both and the
    default (unless it is None: the default is then the app's, or said in ``help``).
    ``field``: the name the command gets the value under (the settings field it fills)."""
    return click.option(
        *(flag, field) if field else (flag,),
        envvar=envvar(flag),
        type=type,
        default=default,
        show_default=default is not None,
        show_envvar=True,
        help=help,
        **extra,
    )


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """The decorators as one, as if stacked in this order above the command."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def gathered(build: Callable[..., Any], *decorators: Callable[[F], F]) -> Callable[[F], F]:
    """The parameters ``decorators`` declare, handed to the command as one ``where``: what
    ``build`` makes of their values (it takes them by their names)."""
    names = tuple(inspect.signature(build).parameters)

    def apply(func: F) -> F:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return func(*args, where=build(**values), **kwargs)

        return options(*decorators)(cast(F, command))

    return apply


def _valid_schema(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return validate_schema_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


schema_option = env_option(
    "--schema",
    default=DEFAULT_SCHEMA,
    help="Schema that holds the outbox table.",
    callback=_valid_schema,
)

partitions_option = env_option(
    "--partitions",
    type=click.IntRange(1, MAX_PARTITIONS),
    default=DEFAULT_PARTITIONS,
    help="Partitions that relays share (fixed when the outbox is created).",
)

logging_options = options(
    env_option(
        "--log-format",
        type=click.Choice(["auto", "json", "console"]),
        default="auto",
        help="auto: console on a terminal, JSON lines otherwise.",
    ),
    env_option("--log-level", type=click.Choice(list(LOG_LEVELS)), default="info", help=None),
)

http_options = options(
    env_option(
        "--http-host",
        default="0.0.0.0",  # noqa: S104 - probes reach a pod on its own address
        help="Address the HTTP endpoints listen on.",
    ),
    env_option(
        "--http-port",
        type=click.IntRange(0, 65535),
        default=0,
        help="Serve /healthz, /readyz and /metrics on this port; 0 turns it off.",
    ),
)


def unhealthy_after_option(*, default: float | None, help: str) -> Callable[[F], F]:
    """``--unhealthy-after``, as ``unhealthy_after_s``: how long a refused configuration
    may last while running before /healthz fails (None: the app's)."""
    return env_option(
        "--unhealthy-after",
        "unhealthy_after_s",
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        help=help,
    )


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
