"""Write docs/cli.md, the reference of every command and option, from the CLI itself.

    python docs/cli_reference.py        # make docs

tests/unit/test_docs.py fails when docs/cli.md differs from what this renders, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path

import click

from outbox_relay.cli import main

TARGET = Path(__file__).resolve().parent / "cli.md"
HEADER = """# Command reference

Generated from the CLI by `make docs` (`python docs/cli_reference.py`); a test keeps it
in step with the code. Every option can also be set through the environment variable
next to it. `outbox-relay COMMAND --help` prints the same.
"""


def render() -> str:
    parts = [HEADER]
    for path, command in _commands(main, ("outbox-relay",)):
        parts.append(_section(path, command))
    return "\n".join(parts)


def _commands(
    group: click.Command, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in sorted(getattr(group, "commands", {}).items()):
        found.append(((*path, name), command))
        found += _commands(command, (*path, name))
    return found


def _section(path: tuple[str, ...], command: click.Command) -> str:
    ctx = click.Context(command, info_name=" ".join(path))
    lines = [f"## `{' '.join(path[1:])}`", "", "```", command.get_usage(ctx), "```", ""]
    if command.help:
        lines += [_plain(command.help), ""]
    options = [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    if options:
        lines += ["| option | variable | default | meaning |", "|---|---|---|---|"]
        lines += [_row(option, ctx) for option in options]
        lines.append("")
    return "\n".join(lines)


def _row(option: click.Option, ctx: click.Context) -> str:
    flags = " / ".join(f"`{flag}`" for flag in option.opts + option.secondary_opts)
    envvar = f"`{option.envvar}`" if isinstance(option.envvar, str) else ""
    value = option.get_default(ctx, call=False)
    if option.is_flag:
        default = "on" if value else ""
    elif value is None or isinstance(value, enum.Enum) or (option.multiple and not value):
        # None, or click's UNSET marker (an enum member): no default
        default = ""
    elif option.multiple and isinstance(value, (tuple, list)):
        default = "`" + ",".join(str(v) for v in value) + "`"  # a list (several broker nodes)
    else:
        default = f"`{value}`"
    meaning = _plain(option.help or "").replace("|", "\\|")
    if isinstance(option.type, click.Choice):
        meaning += " One of: " + ", ".join(f"`{c}`" for c in option.type.choices) + "."
    return f"| {flags} | {envvar} | {default} | {meaning} |"


def _plain(text: str) -> str:
    """Click's help text as Markdown: paragraphs kept, lines joined, \\b markers dropped."""
    paragraphs = [p.replace("\b\n", "").strip() for p in text.strip().split("\n\n")]
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {TARGET}\n")
