"""The fault tier's registry: each test reports what it injected and what arrived; the
session prints one table at the end (lost must be 0)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.broker import BrokerHelper
from tests.support.faults import Tally
from tests.support.scene import Scene


@dataclass(frozen=True)
class FaultRow:
    fault: str
    runs: int
    messages: int
    lost: int
    duplicates: int
    duplicate_effects: int | None = None  # measured where a consumer with an inbox ran
    loss_by_design: bool = False  # the loss is what the fault takes (asserted by the test)


_ROWS = pytest.StashKey[list[FaultRow]]()

Report = Callable[..., None]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS] = []


@pytest.fixture
def scene(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, tmp_path: Path
) -> Iterator[Scene]:
    """The test's services, schema, broker names and log directory; every relay started
    through it is killed when the test ends, before its schema and queues go."""
    stage = Scene(database_url, amqp_url, schema, broker, tmp_path)
    try:
        yield stage
    finally:
        stage.close()


@pytest.fixture
def report_fault(request: pytest.FixtureRequest) -> Report:
    """``report_fault(fault, tally, runs=n)`` adds a row to the table printed at the end;
    ``duplicates_delivered`` replaces the tally's count where a consumer saw the messages,
    ``duplicate_effects`` is given where a consumer with an inbox applied them, and
    ``loss_by_design`` marks a loss the fault itself takes (the test asserts its bounds)."""

    def report(
        fault: str,
        tally: Tally,
        *,
        runs: int = 1,
        duplicates_delivered: int | None = None,
        duplicate_effects: int | None = None,
        loss_by_design: bool = False,
    ) -> None:
        duplicates = tally.duplicates if duplicates_delivered is None else duplicates_delivered
        request.config.stash[_ROWS].append(
            FaultRow(
                fault,
                runs,
                len(tally.expected),
                len(tally.lost),
                duplicates,
                duplicate_effects,
                loss_by_design,
            )
        )

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(_ROWS, [])
    if not rows:
        return
    header = ("fault", "runs", "messages", "lost", "duplicates delivered", "duplicate effects")
    table = [
        header,
        *(
            (
                r.fault,
                str(r.runs),
                str(r.messages),
                f"{r.lost}*" if r.loss_by_design else str(r.lost),
                str(r.duplicates),
                "-" if r.duplicate_effects is None else str(r.duplicate_effects),
            )
            for r in rows
        ),
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    terminalreporter.section("faults: messages lost and duplicated")
    for index, row in enumerate(table):
        numbers = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in numbers)]
        terminalreporter.write_line("  ".join(cells))
        if index == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))
    total_lost = sum(r.lost for r in rows if not r.loss_by_design)
    terminalreporter.write_line(f"lost in total: {total_lost} (must be 0)")
    if any(r.loss_by_design for r in rows):
        terminalreporter.write_line(
            "* lost with the fault itself (commits an asynchronous standby never received), "
            "not counted; the test asserts nothing else was lost"
        )
