"""The README's configuration reference is checked against the CLI, so it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from outbox_relay.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(--[a-z-]+)`(?: / `--no-[a-z-]+`)? \| `([A-Z_]+)` \| `([^`]*)` \|")


def documented_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def options_of(command_name: str) -> list[click.Option]:
    command = main.commands[command_name]
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


@pytest.mark.parametrize("option", options_of("run"), ids=lambda o: o.opts[0])
def test_every_run_option_is_documented_with_its_variable_and_default(option: click.Option) -> None:
    rows = documented_rows()
    flag = option.opts[0]
    assert flag in rows, f"{flag} is missing from the README's table"
    envvar, default = rows[flag]
    assert envvar == option.envvar
    assert default == str(option.default)


def test_the_table_documents_no_option_that_does_not_exist() -> None:
    real = {o.opts[0] for o in options_of("run")}
    assert set(documented_rows()) <= real
