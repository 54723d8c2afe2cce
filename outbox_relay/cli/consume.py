"""``outbox-relay consume MODULE:APP``: run a consumer app until SIGTERM or SIGINT.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT: in-flight handlers drained within the
grace period); 1 the consumer failed (e.g. RabbitMQ refused to declare a queue that
exists with other arguments); 2 bad usage: MODULE:APP cannot be imported or is not a
``ConsumerApp``, or the settings contradict each other; 3 at start, the broker or the
database refused the configuration in a way no retry fixes (login, vhost, database,
role, TLS, the inbox table missing).
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from typing import Any

import click

from outbox_relay.cli.net import (
    AMQP_URL_HELP,
    db_timeout_option,
    dead_peer_timeout_option,
    url_option,
)
from outbox_relay.cli.options import (
    env_option,
    http_options,
    logging_options,
    unhealthy_after_option,
)
from outbox_relay.consumer.app import ConsumerApp
from outbox_relay.errors import ConfigurationError
from outbox_relay.logs import configure_logging


def load_app(spec: str) -> ConsumerApp:
    """Import ``module.path:attribute``; raises ConfigurationError saying what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"APP: expected MODULE:ATTRIBUTE (e.g. billing.handlers:app), got {spec!r}"
        )
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`, the working directory imports
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"APP: cannot import module {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, ConsumerApp):
        raise ConfigurationError(
            f"APP: {spec!r} is {type(app).__name__}, not a ConsumerApp; point at the object "
            "created with ConsumerApp(...)"
        )
    return app


@click.command()
@click.argument("app")
@functools.partial(
    url_option,
    name="database_url",
    default=None,  # None: the app's value
    help="PostgreSQL URL for handlers that take a transaction (overrides the app's).",
)
@functools.partial(
    url_option,
    name="amqp_url",
    default=None,  # None: the app's value
    help=AMQP_URL_HELP,
    multiple=True,
)
# Every option below defaults to None, the app's value; each is named after the field of
# the app's settings it overrides.
@env_option("--schema", default=None, help="Schema holding the inbox table (default: the app's).")
@env_option(
    "--concurrency",
    type=int,
    default=None,
    help="Worker threads shared by the handlers without their own concurrency= (default: "
    "the app's, 4); their queues' prefetch follows it.",
)
@env_option(
    "--shutdown-grace",
    "shutdown_grace_s",
    type=float,
    default=None,
    help="Seconds in-flight handlers get to finish on SIGTERM.",
)
@dead_peer_timeout_option(default_said="30.")
@db_timeout_option(default=None)
@unhealthy_after_option(
    default=None,
    help="Seconds the database or the broker may refuse the configuration while running "
    "(a rotated password, a dropped role or vhost) before /healthz fails; meanwhile it is "
    "retried and logged. At start such a refusal ends the process with exit code 3. "
    "Default: 300.",
)
@http_options
@logging_options
def consume(app: str, log_level: str, log_format: str, **overrides: Any) -> None:
    """Run the handlers of APP (MODULE:ATTRIBUTE, e.g. billing.handlers:app).

    Declares their queues, delay tiers and parking lots, then consumes until SIGTERM or
    SIGINT. With --http-port, serves /healthz (the I/O loop runs), /readyz (connected and
    consuming) and /metrics. Exit codes: 0 clean stop, 1 failure, 2 bad usage or
    configuration, 3 a service refused the configuration at start.
    """
    consumer_app = load_app(app)
    consumer_app.settings(**overrides)  # reject bad settings before logging starts
    configure_logging(level=log_level, fmt=log_format)  # type: ignore[arg-type]
    consumer_app.run(**overrides)
