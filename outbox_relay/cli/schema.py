"""``outbox-relay migrate`` and ``outbox-relay sql``: the outbox's tables and functions,
applied to a database or printed for a migration tool or a DBA."""

from __future__ import annotations

import sys

import click

from outbox_relay.cli.net import database_url_option
from outbox_relay.cli.options import partitions_option, schema_option
from outbox_relay.errors import ConfigurationError
from outbox_relay.store.schema import drop as drop_outbox
from outbox_relay.store.schema import drop_sql, grants_sql, schema_sql
from outbox_relay.store.schema import migrate as apply_migrations
from outbox_relay.store.sqlfiles import GRANT_KINDS
from outbox_relay.urls import redact_url

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


@click.command()
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


@click.command("sql")
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
