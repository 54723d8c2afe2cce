"""The README and the guides are checked against the CLI and each other, so they cannot drift.

- Each command's option table lives under its own heading in its guide: `run` under "Options"
  in docs/relay.md, `consume` under "Command-line options" in docs/consumer.md.
- docs/cli.md is what `make docs` renders.
- Every `outbox-relay ...` line in a shell block names real commands and options, with values
  the CLI accepts (parsed by click; the README's "Add it to your app" is also run as written,
  by tests/integration/test_readme.py).
- Every relative link leads to a file, and to a heading there when it names one.
"""

from __future__ import annotations

import enum
import importlib.util
import re
import shlex
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
    assert flag in rows, (
        f"{flag} is missing from the `{command_name}` table in {SECTIONS[command_name][0].name}"
    )
    envvar, default = rows[flag]
    assert envvar == option.envvar
    if option.default is None and (option.name or "").endswith("_file"):
        expected: str | None = None  # documented as `none`
    elif option.default is None and command_name == "consume":
        expected = APP_DEFAULT
    elif option.default is None and default in {f"({o.opts[0]})" for o in options_of(command_name)}:
        expected = default  # derived from another option, documented as `(--that-option)`
    elif option.default is None:
        expected = None  # no value means not used (e.g. --listen-database-url): `none`
    elif option.multiple and isinstance(option.default, tuple):
        expected = ",".join(option.default)  # a list option (several broker nodes)
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


# ---------------------------------------------------------------------------------------------
# Every `outbox-relay ...` line in a shell block of the README or a guide names a real command
# and real options, with values the CLI accepts; every relative link leads somewhere.

README = ROOT / "README.md"
GUIDES = [README, *sorted(DOCS.glob("*.md"))]
LINKED = [*GUIDES, *sorted((ROOT / "benchmarks").glob("*.md"))]
FENCE = re.compile(r"^\s*```(\S*)")
SHELL_BLOCKS = {"sh", "bash", "shell", "console"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, line number, line) of every line inside a fenced block."""
    found, language = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language is not None:
            found.append((language, number, line))
    return found


def _prose(text: str) -> str:
    """The text outside fenced blocks, line numbers kept (block lines emptied)."""
    inside = {number for _, number, _ in _blocks(text)}
    return "\n".join(
        "" if number in inside or FENCE.match(line) else line
        for number, line in enumerate(text.splitlines(), 1)
    )


def command_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Each `outbox-relay` command in the file's shell blocks, as argv after the program name."""
    commands, pending = [], ""
    for language, number, raw in _blocks(path.read_text(encoding="utf-8")):
        if language not in SHELL_BLOCKS:
            continue
        line = pending + raw.strip().removeprefix("$ ")
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        while words and ASSIGNMENT.match(words[0]):
            words.pop(0)
        if words[:1] != ["outbox-relay"]:
            continue
        for stop, word in enumerate(words):
            if word in {">", ">>", "|", "&&", ";"}:
                words = words[:stop]
                break
        commands.append((number, words[1:]))
    return commands


def check_command(argv: list[str]) -> None:
    """Resolve the (sub)commands and parse their options as click would, without running them.

    Raises click.UsageError (or BadParameter) for an unknown command or option, a missing
    value, a value of the wrong type, or too many or too few arguments. File arguments are
    not opened: the guides name files the reader has.
    """
    command: click.Command = main
    ctx = click.Context(main, info_name="outbox-relay")
    path: list[str] = []
    args = list(argv)
    while True:
        name = " ".join(path)
        opts, rest, _ = command.make_parser(ctx).parse_args(args=args)
        if not isinstance(command, click.Group):
            break
        if not rest:
            raise click.UsageError(f"`outbox-relay {name}` names no subcommand")
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"no command `{' '.join([*path, rest[0]])}`")
        path.append(rest[0])
        ctx = click.Context(sub, info_name=rest[0], parent=ctx)
        command, args = sub, rest[1:]
    for param in command.params:  # the parser puts arguments in opts too
        value = opts.get(param.name) if param.name else None
        missing = value is None or value == () or isinstance(value, enum.Enum)  # click's UNSET
        if isinstance(param, click.Argument) and param.required and missing:
            raise click.UsageError(f"missing argument {param.human_readable_name}")
        if not missing and not isinstance(param.type, (click.Path, click.File)):
            param.type_cast_value(ctx, value)
    if rest:
        raise click.UsageError(f"unexpected extra arguments {rest}")


DOCUMENTED_COMMANDS = [
    pytest.param(argv, id=f"{path.relative_to(ROOT)}:{number}")
    for path in GUIDES
    for number, argv in command_lines(path)
]


def test_the_guides_show_commands() -> None:
    assert len(DOCUMENTED_COMMANDS) > 20


@pytest.mark.parametrize("argv", DOCUMENTED_COMMANDS)
def test_every_documented_command_line_parses(argv: list[str]) -> None:
    try:
        check_command(argv)
    except click.ClickException as exc:
        pytest.fail(f"outbox-relay {shlex.join(argv)}: {exc.format_message()}")


@pytest.mark.parametrize(
    "argv",
    [
        ["nonsense"],
        ["failed"],
        ["failed", "shoe", "42"],
        ["run", "--batch-sise", "10"],
        ["run", "--log-level", "loud"],
        ["run", "--batch-size"],
        ["failed", "show", "ID"],
        ["failed", "show"],
        ["status", "extra"],
        ["sql", "--partitions", "0"],
        ["run", "--drop"],
    ],
)
def test_a_broken_command_line_is_caught(argv: list[str]) -> None:
    with pytest.raises(click.ClickException):
        check_command(argv)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    found, counts = set(), {}
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = counts.get(base, 0)
            counts[base] = count + 1
            found.add(f"{base}-{count}" if count else base)
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(path: Path) -> None:
    assert broken_links(path) == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## A section, `quoted`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section-quoted) [ok](#here) [ok](https://example.org/x)\n"
        "## Here\n[bad](missing.md) [bad](other.md#nowhere) [bad](#gone)\n"
        "```sh\n[not a link](inside-a-block.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading #nowhere in other.md",
        "#gone: no heading #gone in page.md",
    ]


def test_the_readme_stays_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, "README.md is over 200 lines: move the detail into a guide"
    commit = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
    assert not commit.search(_prose("\n".join(lines))), "the README names a commit"


QUOTED = re.compile(r"<!-- quoted from (\S+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)


def quoted_blocks(text: str) -> list[tuple[str, str]]:
    """(source file, code) of each code block marked as quoted from a file."""
    return [(match.group(1), match.group(2)) for match in QUOTED.finditer(text)]


def quote_problems(path: Path) -> list[str]:
    problems = []
    for source, code in quoted_blocks(path.read_text(encoding="utf-8")):
        origin = ROOT / source
        if not origin.is_file():
            problems.append(f"{path.name}: quotes {source}, which does not exist")
        elif code.strip() not in origin.read_text(encoding="utf-8"):
            problems.append(f"{path.name}: a block no longer matches {source}; copy it again")
    return problems


def test_the_guides_quote_code_the_suite_runs() -> None:
    """Examples marked `<!-- quoted from FILE -->` are verbatim excerpts of tested files."""
    assert quoted_blocks((DOCS / "consumer.md").read_text(encoding="utf-8"))
    assert [problem for path in GUIDES for problem in quote_problems(path)] == []


def test_a_stale_quote_is_caught(tmp_path: Path) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text(
        "<!-- quoted from tests/support/guide_billing.py -->\n```python\nprint('not there')\n```\n"
        "<!-- quoted from tests/support/nowhere.py -->\n```python\nx = 1\n```\n",
        encoding="utf-8",
    )
    assert quote_problems(guide) == [
        "guide.md: a block no longer matches tests/support/guide_billing.py; copy it again",
        "guide.md: quotes tests/support/nowhere.py, which does not exist",
    ]
