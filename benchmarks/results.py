"""Writing ``benchmarks/RESULTS.md``: the machine, the date, and every figure of the run."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from benchmarks.common import HERE, Report, machine

# Notes written by hand below this line survive the next run.
HISTORY_MARKER = "<!-- history: kept across runs -->"
HEADER = """# Benchmark results

Written by `python -m benchmarks all` (`make bench`). Every figure stands next to a
ceiling and a baseline measured in the same run, because the machine is shared and noisy:
read the ratios, not the absolute rates.
"""


def write(report: Report, scenarios: list[str], *, started: float, services: str) -> Path:
    path = HERE / "RESULTS.md"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    when = dt.datetime.fromtimestamp(started, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"{HEADER}\n- machine: {machine()}\n- services: {services}\n- date: {when}\n"
        f"- commit: {commit or 'unknown'}\n"
        f"- scenarios: {', '.join(scenarios)}\n\n{report.table()}\n"
    )
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    history = old[old.index(HISTORY_MARKER) :] if HISTORY_MARKER in old else HISTORY_MARKER + "\n"
    path.write_text(f"{text}\n{history}", encoding="utf-8")
    return path
