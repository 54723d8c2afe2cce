"""Recording a relay's metrics during real outages, as input series for `promtool test rules`.

Each scrape is one tick; a promtool test runs the alert rules on them with one tick per
minute, so the recording's time is compressed by ``60 / tick_s``: timestamps and
durations in the samples are rescaled to match, and the rules' ``for:`` clauses and
thresholds meet the outage as they would meet one ``60 / tick_s`` times as long.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TIMESTAMPS = {
    "outbox_relay_last_iteration_timestamp_seconds",
    "outbox_relay_last_publish_timestamp_seconds",
}
DURATIONS = {"outbox_relay_oldest_pending_seconds"}
KEPT = {
    "outbox_relay_dependency_up",
    "outbox_relay_dependency_refused",
    "outbox_relay_partitions_owned",
    "outbox_relay_backlog_rows",
    "outbox_relay_due_rows",
    "outbox_relay_dead_rows",
    "outbox_relay_unowned_partitions",
    "outbox_relay_backlog_scrape_ok",
    "outbox_relay_consumer_dependency_up",
    "outbox_relay_consumer_dependency_refused",
    *TIMESTAMPS,
    *DURATIONS,
}
TARGET = {"job": "outbox-relay", "instance": "relay-0"}


@dataclass
class Recording:
    """Samples of a registry, one scrape per tick; ``None`` in a tick: the target was gone."""

    tick_s: float
    started: float = field(default_factory=time.time)
    ticks: list[dict[str, float] | None] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return 60.0 / self.tick_s

    def scrape(self, registry: CollectorRegistry) -> None:
        sample: dict[str, float] = {}
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for s in family.samples:
                if s.name in KEPT:
                    sample[_series(s.name, s.labels)] = self._rescaled(s.name, s.value)
        self.ticks.append(sample)

    def gone(self) -> None:
        """A tick without a scrape: the target disappeared (Prometheus marks it stale)."""
        self.ticks.append(None)

    def _rescaled(self, name: str, value: float) -> float:
        if name in TIMESTAMPS:
            return round((value - self.started) * self.scale, 1) if value else 0.0
        if name in DURATIONS:
            return round(value * self.scale, 1)
        return value

    def input_series(self) -> list[dict[str, str]]:
        names = sorted({name for tick in self.ticks if tick for name in tick})
        series = []
        for name in names:
            values: list[str] = []
            for n, tick in enumerate(self.ticks):
                if tick is not None and name in tick:
                    values.append(f"{tick[name]:g}")
                elif tick is None and n and self.ticks[n - 1] is not None:
                    values.append("stale")
                else:
                    values.append("_")
            series.append({"series": name, "values": " ".join(values)})
        return series


def _series(name: str, labels: dict[str, str]) -> str:
    merged = {**labels, **TARGET}
    inner = ", ".join(f'{key}="{value}"' for key, value in sorted(merged.items()))
    return f"{name}{{{inner}}}"


def firing(alerts: Iterable[tuple[str, dict[str, str]]], *, at_tick: int) -> dict[str, object]:
    """A promtool expression test: exactly ``alerts`` (name and labels) fire at the tick."""
    samples = []
    for name, labels in alerts:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted({**labels, "alertname": name}.items()))
        samples.append({"labels": f"{{{inner}}}", "value": 1})
    return {
        "expr": 'count by (alertname, service) (ALERTS{alertstate="firing"})',
        "eval_time": f"{at_tick}m",
        "exp_samples": samples,
    }


def promtool_test(recording: Recording, checks: list[dict[str, object]], path: Path) -> Path:
    """Write the promtool test file for ``recording`` with ``checks``."""
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": recording.input_series(),
                "promql_expr_test": checks,
            }
        ],
    }
    path.write_text(yaml.safe_dump(test, sort_keys=False, width=1000))
    return path


def run_promtool(test_file: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` (Debian ships it there)"
        )
    return subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def every_tick(tick_s: float) -> Callable[[], None]:
    """Sleep until the next tick boundary."""
    next_at = time.monotonic()

    def wait() -> None:
        nonlocal next_at
        next_at += tick_s
        time.sleep(max(0.0, next_at - time.monotonic()))

    return wait
