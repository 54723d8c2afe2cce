"""``outbox-relay run``: relay committed outbox rows to RabbitMQ until SIGTERM or SIGINT.

Its options fill the process's one :class:`~outbox_relay.settings.RunSettings`; each is
named after the field it fills, so the settings are built from them without listing them
again.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from dataclasses import fields
from typing import Any, cast

import click
import structlog
from prometheus_client import CollectorRegistry

from outbox_relay.broker_nodes import NodeInUse
from outbox_relay.cli.net import (
    amqp_url_option,
    database_url_option,
    db_timeout_option,
    dead_peer_timeout_option,
    listen_database_url_option,
)
from outbox_relay.cli.options import (
    F,
    env_option,
    http_options,
    logging_options,
    options,
    schema_option,
    unhealthy_after_option,
)
from outbox_relay.logs import configure_logging
from outbox_relay.misconfiguration import UNHEALTHY_AFTER_S
from outbox_relay.observability.http import HealthServer
from outbox_relay.observability.relay_metrics import BacklogCollector, RelayMetrics
from outbox_relay.publisher import CONFIRM_TIMEOUT_S, Publisher
from outbox_relay.relay import (
    BATCH_BYTES,
    BATCH_SIZE,
    HEARTBEAT_INTERVAL_S,
    LEASE_TTL_S,
    MAX_ATTEMPTS,
    POLL_INTERVAL_S,
    Relay,
    RelaySettings,
    new_relay_id,
)
from outbox_relay.relay.backoff import RETRY_BASE_S, RETRY_MAX_S
from outbox_relay.settings import RunSettings
from outbox_relay.store.deadline import DB_TIMEOUT_S
from outbox_relay.store.relay_store import ORDER_GATE_MAX_WAIT_S, PostgresStore
from outbox_relay.store.status import backlog_figures
from outbox_relay.urls import redact_url
from outbox_relay.watchdog import SystemdNotifier, Watchdog

_RELAY_FIELDS = frozenset(field.name for field in fields(RelaySettings))
_RUN_FIELDS = frozenset(field.name for field in fields(RunSettings)) - {"relay"}

_settings_options = options(
    database_url_option,
    listen_database_url_option,
    amqp_url_option,
    schema_option,
    env_option(
        "--batch-size",
        "batch_size",
        type=int,
        default=BATCH_SIZE,
        help="Rows claimed and published per transaction.",
    ),
    env_option(
        "--batch-bytes",
        "batch_bytes",
        type=click.IntRange(min=1),
        default=BATCH_BYTES,
        help="Payload bytes per batch: a batch ends at this size or at --batch-size rows, "
        "whichever comes first (its first row always goes, whatever its size). Bounds the "
        "relay's memory when payloads are large.",
    ),
    env_option(
        "--poll-interval",
        "poll_interval_s",
        type=float,
        default=POLL_INTERVAL_S,
        help="Seconds between polls while idle; NOTIFY wakes the relay sooner.",
    ),
    env_option(
        "--max-attempts",
        "max_attempts",
        type=int,
        default=MAX_ATTEMPTS,
        help="Tries before a row the broker keeps refusing is marked dead.",
    ),
    env_option(
        "--retry-base",
        "retry_base_s",
        type=float,
        default=RETRY_BASE_S,
        help="Seconds before the first retry of a refused row; doubles each time.",
    ),
    env_option(
        "--retry-max",
        "retry_max_s",
        type=float,
        default=RETRY_MAX_S,
        help="Longest delay between retries of a refused row, in seconds.",
    ),
    env_option(
        "--confirm-timeout",
        "confirm_timeout_s",
        type=float,
        default=CONFIRM_TIMEOUT_S,
        help="Seconds the broker may leave a batch's publisher confirms outstanding without "
        "confirming anything, counted from the batch's send or the last confirm, before the "
        "relay reconnects (not counted while the broker blocks publishers). "
        "The wait also ends when the partition lease runs out "
        "(about --lease-ttl minus 1 s), since the database ends a claim idle that long.",
    ),
    env_option(
        "--lease-ttl",
        "lease_ttl_s",
        type=float,
        default=LEASE_TTL_S,
        help="Seconds a relay holds its partitions without a heartbeat; a dead relay's "
        "partitions move after at most this plus --heartbeat-interval. Heartbeats run between "
        "batches: it must outlast a heartbeat interval plus the broker's confirms of two "
        "batches, with 1 s to spare, or batches are given up and published again.",
    ),
    env_option(
        "--heartbeat-interval",
        "heartbeat_interval_s",
        type=float,
        default=HEARTBEAT_INTERVAL_S,
        help="Seconds between heartbeats, which renew leases and rebalance partitions.",
    ),
    env_option(
        "--order-gate/--no-order-gate",
        "order_gate",
        default=False,
        help="Publish a keyed row only once no older transaction that could still commit an "
        "earlier row of its key is running (for applications that write one key from "
        "concurrent transactions). A long unrelated transaction then delays keyed rows.",
    ),
    env_option(
        "--order-gate-max-wait",
        "order_gate_max_wait_s",
        type=float,
        default=ORDER_GATE_MAX_WAIT_S,
        help="Seconds a keyed row waits at the order gate at most before it is published anyway.",
    ),
    dead_peer_timeout_option(
        default_said="--lease-ttl, since a relay cut off that long has lost its partitions anyway."
    ),
    db_timeout_option(default=DB_TIMEOUT_S),
)


def run_settings_options(func: F) -> F:
    """The options above, handed to the command as one ``settings``: the process's
    :class:`RunSettings`, checked before anything connects. Every option is named after
    the field it fills, in RunSettings or in its RelaySettings."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        relay = RelaySettings(**{name: kwargs.pop(name) for name in _RELAY_FIELDS & kwargs.keys()})
        values = {name: kwargs.pop(name) for name in _RUN_FIELDS & kwargs.keys()}
        if values["dead_peer_timeout_s"] is None:
            values["dead_peer_timeout_s"] = relay.lease_ttl_s
        return func(*args, settings=RunSettings(relay=relay, **values), **kwargs)

    return _settings_options(cast(F, command))


@click.command()
@run_settings_options
@env_option(
    "--exit-when-stuck/--no-exit-when-stuck",
    default=False,
    help="Exit with code 1 when the loop has not gone round for 60 s (what /healthz "
    "reports), so a restart policy (compose's `restart:`) starts the relay again where "
    "nothing reads /healthz. Under systemd, WatchdogSec= in the unit does this instead.",
)
@unhealthy_after_option(
    default=UNHEALTHY_AFTER_S,
    help="Seconds the database or the broker may refuse the configuration (a "
    "rotated password, a dropped role or vhost, TLS refused) while running before "
    "/healthz fails; meanwhile it is retried and logged. At start such a refusal "
    "ends the process with exit code 3.",
)
@http_options
@logging_options
def run(
    settings: RunSettings,
    exit_when_stuck: bool,
    http_port: int,
    http_host: str,
    log_level: str,
    log_format: str,
) -> None:
    """Relay committed outbox rows to RabbitMQ until SIGTERM or SIGINT."""
    relay: Relay | None = None

    def should_stop() -> bool:
        return relay is not None and relay.stopping

    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    node_in_use = NodeInUse(on_change=metrics.connected_to)  # the metric's and /readyz's
    registry.register(
        BacklogCollector(lambda: backlog_figures(settings.database_url, settings.schema))
    )
    store = PostgresStore(
        url=settings.database_url,
        schema=settings.schema,
        relay_id=new_relay_id(),
        lease_ttl_s=settings.relay.lease_ttl_s,
        order_gate=settings.order_gate,
        order_gate_max_wait_s=settings.order_gate_max_wait_s,
        dead_peer_timeout_s=settings.dead_peer_timeout_s,
        listen_url=settings.listen_database_url,
        db_timeout_s=settings.db_timeout_s,
    )
    relay = Relay(
        store=store,
        publisher=Publisher(
            url=settings.amqp_url,
            confirm_timeout_s=settings.confirm_timeout_s,
            dead_peer_timeout_s=settings.dead_peer_timeout_s,
            should_stop=should_stop,
            on_node=node_in_use.connected_to,
        ),
        settings=settings.relay,
        observer=metrics,
    )
    # Only now: a URL pika cannot read was refused above, before logging was set up.
    configure_logging(level=log_level, fmt=log_format)  # type: ignore[arg-type]
    log = structlog.get_logger("outbox_relay.cli")

    def on_signal(signum: int, _frame: object) -> None:
        relay.stop(reason=signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "relay.starting",
        database=redact_url(settings.database_url),
        broker=redact_url(settings.amqp_url),
        schema=settings.schema,
        batch_size=settings.relay.batch_size,
        batch_bytes=settings.relay.batch_bytes,
    )
    server = (
        HealthServer(
            host=http_host,
            port=http_port,
            registry=registry,
            liveness=relay.liveness,
            readiness=node_in_use.readiness(_with_wake_up(relay.readiness, store)),
        ).start()
        if http_port
        else None
    )
    watchdog = Watchdog(
        notifier=SystemdNotifier(os.environ),
        liveness=relay.liveness,
        stopping=lambda: relay.stopping,
        exit_when_stuck=exit_when_stuck,
    ).start()
    try:
        relay.run()
    finally:
        watchdog.close()
        if server is not None:
            server.close()


def _with_wake_up(
    readiness: Callable[[], tuple[bool, str]], store: PostgresStore
) -> Callable[[], tuple[bool, str]]:
    """/readyz's details also say how the relay learns of new rows (polling behind a
    transaction-mode pooler)."""

    def ready() -> tuple[bool, str]:
        ok, detail = readiness()
        wake_up = store.wake_up
        return ok, f"{detail}; {wake_up}" if wake_up else detail

    return ready
