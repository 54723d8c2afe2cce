"""The guides' configuration references are checked against the CLI, so they cannot drift.

Each command's table lives under its own heading in its guide: `run` under "Options" in
docs/relay.md, `consume` under "Command-line options" in docs/consumer.md.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click
import pytest

from outbox_relay.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ROW = re.compile(r"^\| `(--[a-z-]+)`(?: / `--no-[a-z-]+`)? \| `([A-Z_]+)` \| (?:`([^`]*)`|none) \|")
SECTIONS = {
    "run": (DOCS / "relay.md", "## Options"),
    "consume": (DOCS / "consumer.md", "## Command-line options"),
}
APP_DEFAULT = "(the app's)"  # a consume option left out takes the ConsumerApp's value


def documented_rows(command_name: str) -> dict[str, tuple[str, str | None]]:
    """flag -> (variable, default); an option without a default says `none`."""
    guide, heading = SECTIONS[command_name]
    text = guide.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    rows = {}
    for line in text[start : end if end != -1 else None].splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def options_of(command_name: str) -> list[click.Option]:
    command = main.commands[command_name]
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


COMMAND_OPTIONS = [
    pytest.param(name, option, id=f"{name} {option.opts[0]}")
    for name in SECTIONS
    for option in options_of(name)
]


@pytest.mark.parametrize(("command_name", "option"), COMMAND_OPTIONS)
def test_every_option_is_documented_with_its_variable_and_default(
    command_name: str, option: click.Option
) -> None:
    rows = documented_rows(command_name)
    flag = option.opts[0]
    assert flag in rows, f"{flag} is missing from the `{command_name}` table in {SECTIONS[command_name][0].name}"
    envvar, default = rows[flag]
    assert envvar == option.envvar
    if option.default is None and (option.name or "").endswith("_file"):
        expected: str | None = None  # documented as `none`
    elif option.default is None and command_name == "consume":
        expected = APP_DEFAULT
    elif option.default is None and default in {f"({o.opts[0]})" for o in options_of(command_name)}:
        expected = default  # derived from another option, documented as `(--that-option)`
    else:
        expected = str(option.default)
    assert default == expected


@pytest.mark.parametrize("command_name", list(SECTIONS))
def test_the_tables_document_no_option_that_does_not_exist(command_name: str) -> None:
    real = {o.opts[0] for o in options_of(command_name)}
    assert set(documented_rows(command_name)) <= real


def test_the_command_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert written == module.render(), "docs/cli.md is stale: run `make docs`"
    for command in main.commands:
        assert f"## `{command}`" in written
