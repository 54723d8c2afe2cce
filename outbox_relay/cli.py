"""The ``outbox-relay`` command.

Exit codes: 0 success (and a clean stop on SIGTERM/SIGINT); 1 the operation failed (the
message says what and what to do); 2 bad usage or configuration; 3 a service refused the
configuration at start in a way no retry fixes (login or permissions refused, a database,
role or vhost that does not exist, TLS refused, the outbox's tables missing): one line
names the URL, the cause and the fix.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
import structlog
from prometheus_client import CollectorRegistry

from outbox_relay.broker_nodes import NodeInUse
from outbox_relay.cli_consume import consume
from outbox_relay.cli_dead_letters import dead_letters
from outbox_relay.cli_failed import failed
from outbox_relay.cli_options import (
    EXIT_FAILED,
    EXIT_MISCONFIGURED,
    amqp_url_option,
    database_url_option,
    db_timeout_option,
    given_url,
    http_options,
    listen_database_url_option,
    logging_options,
    partitions_option,
    schema_option,
    unhealthy_after_option,
)
from outbox_relay.cli_topology import topology
from outbox_relay.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MisconfiguredError,
    OutboxRelayError,
    StoreError,
    StoreUnavailableError,
)
from outbox_relay.logs import configure_logging
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
from outbox_relay.settings import (
    RunSettings,
)
from outbox_relay.status_view import render_status
from outbox_relay.store.deadline import DB_TIMEOUT_S
from outbox_relay.store.relay_store import ORDER_GATE_MAX_WAIT_S, PostgresStore
from outbox_relay.store.schema import drop as drop_outbox
from outbox_relay.store.schema import drop_sql, grants_sql, schema_sql
from outbox_relay.store.schema import migrate as apply_migrations
from outbox_relay.store.sqlfiles import GRANT_KINDS
from outbox_relay.store.status import backlog_figures, read_status
from outbox_relay.urls import redact_url
from outbox_relay.watchdog import SystemdNotifier, Watchdog


class _Group(click.Group):
    """Turns our errors into one line on stderr and the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.UsageError(str(exc), ctx) from exc
        except MisconfiguredError as exc:
            click.echo(f"error: {_refusal_line(exc)}", err=True)
            ctx.exit(EXIT_MISCONFIGURED)
        except StoreError as exc:
            click.echo(f"error: {_store_hint(exc)}", err=True)
            ctx.exit(EXIT_FAILED)
        except BrokerUnavailableError as exc:
            click.echo(f"error: {_one_line(exc)}; {_BROKER_HINT}", err=True)
            ctx.exit(EXIT_FAILED)
        except OutboxRelayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_FAILED)


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


wake_trigger_option = click.option(
    "--wake-trigger",
    is_flag=True,
    help="Also (re)create the trigger that wakes a waiting relay on every INSERT into the "
    "outbox, for writers that do not use publish() or call outbox_wake(). It costs every "
    "inserting transaction a little (see docs/producing.md#writers-other-than-publish); "
    "publish() does not need it.",
)


drop_option = click.option(
    "--drop",
    is_flag=True,
    help="Remove what migrate created instead: the outbox's tables, with every row in them, "
    "and its functions. Nothing else: no CASCADE (an object of yours that depends on them "
    "stops it), and the schema itself stays.",
)


@main.command()
@database_url_option
@schema_option
@partitions_option
@wake_trigger_option
@drop_option
@click.option(
    "--yes", is_flag=True, help="With --drop: do not ask for confirmation (needed without a TTY)."
)
def migrate(
    database_url: str, schema: str, partitions: int, wake_trigger: bool, drop: bool, yes: bool
) -> None:
    """Create or upgrade the outbox tables in SCHEMA (creating the schema if needed).

    Idempotent: a second run applies nothing. Touches no other table. With --drop, remove
    them again, after asking.
    """
    target = f"{redact_url(database_url)} schema {schema!r}"
    if drop:
        _drop(database_url, schema, target, wake_trigger=wake_trigger, yes=yes)
        return
    if yes:
        raise ConfigurationError("--yes confirms --drop; without --drop there is nothing to ask")
    report = apply_migrations(
        database_url, schema=schema, partitions=partitions, wake_trigger=wake_trigger
    )
    if report.created:
        click.echo(f"created the outbox (version {report.version}) in {target}")
    elif report.applied:
        click.echo(f"applied {', '.join(report.applied)} to {target}")
    else:
        click.echo(f"{target} is up to date (version {report.version})")
    if wake_trigger:
        click.echo(f"the wake-up trigger is on the outbox of schema {schema!r}")


def _drop(database_url: str, schema: str, target: str, *, wake_trigger: bool, yes: bool) -> None:
    if wake_trigger:
        raise ConfigurationError("--drop removes the wake-up trigger too; leave --wake-trigger out")
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigurationError(
                "--drop asks before it drops anything, and there is no terminal to ask on: "
                "pass --yes to drop without asking"
            )
        click.confirm(
            f"Drop the outbox from {target}: its tables with every row in them (messages not "
            "yet relayed, the inbox) and its functions?",
            abort=True,
        )
    report = drop_outbox(database_url, schema=schema)
    if not report.tables and not report.functions:
        click.echo(f"{target} holds no outbox: nothing dropped")
        return
    click.echo(
        f"dropped from {target}: tables {', '.join(report.tables) or 'none'}; "
        f"functions {', '.join(report.functions) or 'none'}. "
        f"The schema itself is left in place."
    )


@main.command("sql")
@schema_option
@partitions_option
@click.option(
    "--since-version",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Print only the migrations newer than this version (the highest in "
    "SCHEMA.outbox_migrations), for a schema that has it; 0 prints the whole schema.",
)
@click.option(
    "--grants",
    "grants",
    multiple=True,
    metavar="KIND=ROLE",
    # docs/cli.md is generated from this text.
    help="Print, instead of the DDL, the least privileges ROLE needs as KIND: 'relay' (its "
    "own tables), 'producer' (INSERT on the outbox, its wake-up function) or 'consumer', "
    "written consumer=ROLE:APP[,APP...] (the inbox rows of those consumer apps, "
    "ConsumerApp(name=...), and no others, through row-level security: print it for every "
    "consumer role). Repeatable.",
)
@wake_trigger_option
@click.option(
    "--drop",
    is_flag=True,
    help="Print, instead of the DDL, the statements that remove what it creates (what "
    "`migrate --drop` runs): the outbox's tables and functions, no CASCADE, not the schema. "
    "For a migration tool's downgrade.",
)
def print_sql(
    schema: str,
    partitions: int,
    since_version: int,
    grants: tuple[str, ...],
    wake_trigger: bool,
    drop: bool,
) -> None:
    """Print the DDL that `migrate` applies, for Alembic, Django, Flyway or a DBA.

    Every statement is idempotent and records its version, so `migrate` can run after it.
    With --grants, print the GRANT statements for the relay's, producers' and consumers'
    roles; with --drop, the statements that remove the outbox again.
    """
    if drop:
        if grants or wake_trigger or since_version:
            raise ConfigurationError(
                "--drop prints the statements that remove the whole outbox (the trigger "
                "too); leave out --grants, --wake-trigger and --since-version"
            )
        try:
            click.echo(drop_sql(schema=schema), nl=False)
        except ValueError as exc:
            raise ConfigurationError(f"--schema: {exc}") from exc
        return
    if grants:
        if wake_trigger:
            raise ConfigurationError(
                "--wake-trigger is part of the DDL: print it without --grants, and the "
                "grants in a second run"
            )
        parsed = [_grant(value) for value in grants]
        roles = [(kind, role) for kind, role, _ in parsed]
        apps = {role: names for kind, role, names in parsed if kind == "consumer"}
        try:
            click.echo(grants_sql(schema=schema, roles=roles, consumer_apps=apps), nl=False)
        except ValueError as exc:
            raise ConfigurationError(f"--grants/--schema: {exc}") from exc
        return
    try:
        text = schema_sql(
            schema=schema,
            since_version=since_version,
            partitions=partitions,
            wake_trigger=wake_trigger,
        )
        click.echo(text, nl=False)
    except ConfigurationError:
        raise
    except ValueError as exc:
        raise ConfigurationError(f"--schema: {exc}") from exc


def _grant(value: str) -> tuple[str, str, tuple[str, ...]]:
    """KIND=ROLE, or consumer=ROLE:APP[,APP...]: the consumer apps whose inbox rows the
    role may use."""
    kind, _, role = value.partition("=")
    if kind not in GRANT_KINDS or not role:
        raise ConfigurationError(
            f"--grants {value!r}: expected KIND=ROLE with KIND one of {', '.join(GRANT_KINDS)}, "
            "e.g. --grants relay=outbox_relay --grants producer=app "
            "--grants consumer=billing_role:billing"
        )
    if kind != "consumer":
        return kind, role, ()
    role, _, names = role.partition(":")
    apps = tuple(names.split(",")) if names else ()
    if not role or not apps or not all(apps) or any(":" in app for app in apps):
        raise ConfigurationError(
            f"--grants {value!r}: expected consumer=ROLE:APP[,APP...], APP being the name "
            "of a consumer app (ConsumerApp(name=...)) whose inbox rows ROLE may use; "
            "app names cannot contain ':'"
        )
    return kind, role, apps


@main.command()
@database_url_option
@listen_database_url_option
@amqp_url_option
@schema_option
@click.option(
    "--batch-size",
    envvar="OUTBOX_RELAY_BATCH_SIZE",
    type=int,
    default=BATCH_SIZE,
    show_default=True,
    show_envvar=True,
    help="Rows claimed and published per transaction.",
)
@click.option(
    "--batch-bytes",
    envvar="OUTBOX_RELAY_BATCH_BYTES",
    type=click.IntRange(min=1),
    default=BATCH_BYTES,
    show_default=True,
    show_envvar=True,
    help="Payload bytes per batch: a batch ends at this size or at --batch-size rows, "
    "whichever comes first (its first row always goes, whatever its size). Bounds the "
    "relay's memory when payloads are large.",
)
@click.option(
    "--poll-interval",
    envvar="OUTBOX_RELAY_POLL_INTERVAL",
    type=float,
    default=POLL_INTERVAL_S,
    show_default=True,
    show_envvar=True,
    help="Seconds between polls while idle; NOTIFY wakes the relay sooner.",
)
@click.option(
    "--max-attempts",
    envvar="OUTBOX_RELAY_MAX_ATTEMPTS",
    type=int,
    default=MAX_ATTEMPTS,
    show_default=True,
    show_envvar=True,
    help="Tries before a row the broker keeps refusing is marked dead.",
)
@click.option(
    "--retry-base",
    envvar="OUTBOX_RELAY_RETRY_BASE",
    type=float,
    default=RETRY_BASE_S,
    show_default=True,
    show_envvar=True,
    help="Seconds before the first retry of a refused row; doubles each time.",
)
@click.option(
    "--retry-max",
    envvar="OUTBOX_RELAY_RETRY_MAX",
    type=float,
    default=RETRY_MAX_S,
    show_default=True,
    show_envvar=True,
    help="Longest delay between retries of a refused row, in seconds.",
)
@click.option(
    "--confirm-timeout",
    envvar="OUTBOX_RELAY_CONFIRM_TIMEOUT",
    type=float,
    default=CONFIRM_TIMEOUT_S,
    show_default=True,
    show_envvar=True,
    help="Seconds the broker may leave a batch's publisher confirms outstanding without "
    "confirming anything, counted from the batch's send or the last confirm, before the "
    "relay reconnects (not counted while the broker blocks publishers). "
    "The wait also ends when the partition lease runs out "
    "(about --lease-ttl minus 1 s), since the database ends a claim idle that long.",
)
@click.option(
    "--lease-ttl",
    envvar="OUTBOX_RELAY_LEASE_TTL",
    type=float,
    default=LEASE_TTL_S,
    show_default=True,
    show_envvar=True,
    help="Seconds a relay holds its partitions without a heartbeat; a dead relay's "
    "partitions move after at most this plus --heartbeat-interval. Heartbeats run between "
    "batches: it must outlast a heartbeat interval plus the broker's confirms of two "
    "batches, with 1 s to spare, or batches are given up and published again.",
)
@click.option(
    "--heartbeat-interval",
    envvar="OUTBOX_RELAY_HEARTBEAT_INTERVAL",
    type=float,
    default=HEARTBEAT_INTERVAL_S,
    show_default=True,
    show_envvar=True,
    help="Seconds between heartbeats, which renew leases and rebalance partitions.",
)
@click.option(
    "--order-gate/--no-order-gate",
    envvar="OUTBOX_RELAY_ORDER_GATE",
    default=False,
    show_default=True,
    show_envvar=True,
    help="Publish a keyed row only once no older transaction that could still commit an "
    "earlier row of its key is running (for applications that write one key from "
    "concurrent transactions). A long unrelated transaction then delays keyed rows.",
)
@click.option(
    "--order-gate-max-wait",
    envvar="OUTBOX_RELAY_ORDER_GATE_MAX_WAIT",
    type=float,
    default=ORDER_GATE_MAX_WAIT_S,
    show_default=True,
    show_envvar=True,
    help="Seconds a keyed row waits at the order gate at most before it is published anyway.",
)
@click.option(
    "--dead-peer-timeout",
    envvar="OUTBOX_RELAY_DEAD_PEER_TIMEOUT",
    type=float,
    default=None,
    show_envvar=True,
    help="Seconds after which a silent or unresponsive connection to PostgreSQL or "
    "RabbitMQ counts as dead (TCP keepalives and TCP_USER_TIMEOUT); 0 leaves the "
    "operating system's defaults. Default: --lease-ttl, since a relay cut off that long has lost "
    "its partitions anyway.",
)
@db_timeout_option(default=DB_TIMEOUT_S)
@click.option(
    "--exit-when-stuck/--no-exit-when-stuck",
    envvar="OUTBOX_RELAY_EXIT_WHEN_STUCK",
    default=False,
    show_default=True,
    show_envvar=True,
    help="Exit with code 1 when the loop has not gone round for 60 s (what /healthz "
    "reports), so a restart policy (compose's `restart:`) starts the relay again where "
    "nothing reads /healthz. Under systemd, WatchdogSec= in the unit does this instead.",
)
@unhealthy_after_option
@http_options
@logging_options
def run(
    database_url: str,
    listen_database_url: str | None,
    amqp_url: str,
    schema: str,
    batch_size: int,
    batch_bytes: int,
    poll_interval: float,
    max_attempts: int,
    retry_base: float,
    retry_max: float,
    confirm_timeout: float,
    lease_ttl: float,
    heartbeat_interval: float,
    order_gate: bool,
    order_gate_max_wait: float,
    dead_peer_timeout: float | None,
    db_timeout: float,
    exit_when_stuck: bool,
    unhealthy_after: float,
    http_port: int,
    http_host: str,
    log_level: str,
    log_format: str,
) -> None:
    """Relay committed outbox rows to RabbitMQ until SIGTERM or SIGINT."""
    settings = RunSettings(
        database_url=database_url,
        listen_database_url=listen_database_url,
        amqp_url=amqp_url,
        schema=schema,
        relay=RelaySettings(
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            poll_interval_s=poll_interval,
            max_attempts=max_attempts,
            retry_base_s=retry_base,
            retry_max_s=retry_max,
            lease_ttl_s=lease_ttl,
            heartbeat_interval_s=heartbeat_interval,
            unhealthy_after_s=unhealthy_after,
        ),
        confirm_timeout_s=confirm_timeout,
        dead_peer_timeout_s=lease_ttl if dead_peer_timeout is None else dead_peer_timeout,
        db_timeout_s=db_timeout,
    )
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
        order_gate=order_gate,
        order_gate_max_wait_s=order_gate_max_wait,
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


main.add_command(consume)
main.add_command(topology)
main.add_command(failed)
main.add_command(dead_letters)
