"""``outbox-relay topology plan|apply FILE``: make RabbitMQ match a topology file.

Exit codes: 0 done (``plan``: nothing conflicts); 1 a conflict, a missing exchange or a
broker failure (the message says which object and what to do); 2 the file is invalid
or the usage is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from outbox_relay.cli.net import amqp_url_option
from outbox_relay.cli.options import EXIT_FAILED, EXIT_USAGE
from outbox_relay.topology import (
    InvalidTopologyError,
    Topology,
    TopologyConflictError,
    load_topology,
)
from outbox_relay.topology import apply as apply_topology
from outbox_relay.topology import plan as plan_topology

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as one JSON document."
)


@click.group()
def topology() -> None:
    """Declare exchanges, queues, retry tiers and parking lots from a TOML file.

    The format is documented in docs/topology.md.
    """


@topology.command()
@click.argument("file", type=_FILE)
@amqp_url_option
@_json_option
def plan(file: Path, amqp_url: str, as_json: bool) -> None:
    """Show what `apply` would create, what already matches and what conflicts.

    Changes nothing on the broker. Exits 1 when something conflicts or is missing.
    """
    result = plan_topology(amqp_url, _load(file))
    _emit(result.as_dict() if as_json else result.render(), as_json=as_json)
    if not result.ok:
        click.get_current_context().exit(EXIT_FAILED)


@topology.command()
@click.argument("file", type=_FILE)
@amqp_url_option
@_json_option
def apply(file: Path, amqp_url: str, as_json: bool) -> None:
    """Declare what FILE needs; applying again reports "up to date".

    Checks everything first: when an object exists with other arguments, nothing is
    declared and the conflict is explained.
    """
    try:
        report = apply_topology(amqp_url, _load(file))
    except TopologyConflictError as exc:
        if not as_json:
            raise
        _emit({"applied": False, **exc.plan.as_dict()}, as_json=True)
        click.get_current_context().exit(EXIT_FAILED)
    _emit(report.as_dict() if as_json else report.render(), as_json=as_json)


def _load(file: Path) -> Topology:
    try:
        return load_topology(file)
    except InvalidTopologyError as exc:
        click.echo(f"error: {exc}", err=True)
        click.get_current_context().exit(EXIT_USAGE)
        raise  # pragma: no cover - exit() raised


def _emit(output: str | dict[str, Any], *, as_json: bool) -> None:
    click.echo(json.dumps(output, indent=2) if as_json else str(output))
