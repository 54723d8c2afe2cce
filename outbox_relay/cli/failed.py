"""`outbox-relay failed`: the outbox rows the relay gave up on, for the person on call."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from outbox_relay.cli.net import database_url_option
from outbox_relay.cli.options import (
    confirm,
    duration_option,
    gathered,
    json_option,
    limit_option,
    progress,
    schema_option,
    yes_option,
)
from outbox_relay.store.failed import DeadRow, DeadRowFilter, FailedRows

LIST_LIMIT = 50


def _where(
    ids: tuple[int, ...], exchange: str | None, partition_key: str | None, older_than: float | None
) -> DeadRowFilter:
    return DeadRowFilter(
        ids=list(ids) or None,
        exchange=exchange,
        partition_key=partition_key,
        older_than_s=older_than,
    )


_filters = gathered(
    _where,
    duration_option("--older-than", help="Only rows dead for longer than this (e.g. 10m, 2h, 7d)."),
    click.option("--key", "partition_key", help="Only rows with this partition key."),
    click.option("--exchange", help="Only rows for this exchange."),
    click.argument("ids", nargs=-1, type=int),
)


def _json_row(row: DeadRow) -> dict[str, Any]:
    data = asdict(row)
    data["created_at"] = row.created_at.isoformat()
    data["dead_at"] = row.dead_at.isoformat()
    data.pop("payload", None)
    return data


@click.group()
def failed() -> None:
    """Dead outbox rows: the broker kept refusing them (see `last_error`)."""


@failed.command("list")
@database_url_option
@schema_option
@_filters
@limit_option(LIST_LIMIT, "List at most this many.")
@json_option("JSON lines, one row each.")
def list_rows(
    database_url: str, schema: str, where: DeadRowFilter, limit: int, as_json: bool
) -> None:
    """List dead rows (IDS to pick some), oldest first."""
    rows = FailedRows(database_url, schema=schema).find(where, limit=limit)
    for row in rows:
        if as_json:
            click.echo(json.dumps(_json_row(row)))
        else:
            click.echo(
                f"{row.id:>10}  {row.dead_at:%Y-%m-%d %H:%M:%S}  {row.exchange} {row.routing_key}"
                f"  key={row.partition_key or '-'}  attempts={row.attempts}\n"
                f"{'':>12}{row.last_error or ''}"
            )
    if not rows and not as_json:
        click.echo("no dead rows match")


@failed.command("show")
@database_url_option
@schema_option
@click.argument("row_id", type=int)
@click.option("--payload", is_flag=True, help="Print the payload too (it may hold personal data).")
def show_row(database_url: str, schema: str, row_id: int, payload: bool) -> None:
    """Everything about one row, as JSON."""
    row = FailedRows(database_url, schema=schema).show(row_id)
    if row is None:
        raise click.ClickException(f"no outbox row {row_id} in schema {schema!r}")
    data = _json_row(row)
    if payload and row.payload is not None:
        data["payload"] = row.payload.decode("utf-8", errors="replace")
    click.echo(json.dumps(data, indent=2))


def _settle_command(name: str, question: str, done: str, help: str) -> None:
    """``failed NAME``: ask QUESTION about the matching rows, then apply
    :meth:`FailedRows.retry` or :meth:`FailedRows.purge` (NAME) to them."""

    @failed.command(name, help=help)
    @database_url_option
    @schema_option
    @_filters
    @yes_option
    def command(database_url: str, schema: str, where: DeadRowFilter, yes: bool) -> None:
        confirm(question, _describe(where), yes=yes)
        rows = FailedRows(database_url, schema=schema)
        settle = rows.retry if name == "retry" else rows.purge
        count = settle(where, progress=progress(done))
        click.echo(f"{done} {count} rows")


_settle_command(
    "retry", "Retry", "retried", "Give matching dead rows a fresh set of attempts, due now."
)
_settle_command("purge", "Delete", "deleted", "Delete matching dead rows for good.")


def _describe(where: DeadRowFilter) -> str:
    parts = [f"rows {', '.join(map(str, where.ids))}" if where.ids else "all dead rows"]
    if where.exchange:
        parts.append(f"for exchange {where.exchange!r}")
    if where.partition_key:
        parts.append(f"with key {where.partition_key!r}")
    if where.older_than_s is not None:
        parts.append(f"dead for over {where.older_than_s:g} s")
    return " ".join(parts)
