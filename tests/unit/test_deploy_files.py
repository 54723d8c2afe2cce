"""The deploy files parse, and name only metrics, commands and variables that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from outbox_relay.cli import main
from outbox_relay.observability.consumer_metrics import ConsumerMetrics
from outbox_relay.observability.relay_metrics import BacklogCollector, RelayMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(outbox_relay_[a-z_]+)\b")
VARIABLE = re.compile(r"\b(OUTBOX_RELAY_[A-Z_]+)\b")


def exported_metric_names() -> set[str]:
    registry = CollectorRegistry()
    RelayMetrics(registry)
    ConsumerMetrics(registry, handlers=[("a.queue", "a_handler")])  # labelled series show up
    text = generate_latest(registry).decode()
    samples = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    return samples | set(BacklogCollector.FIGURES)


def documented_variables() -> set[str]:
    found: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
        for child in getattr(command, "commands", {}).values():
            walk(child)

    walk(main)
    return found


def deploy_texts() -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in DEPLOY.rglob("*")
        if p.is_file() and p.suffix in {".yml", ".yaml", ".json", ".service", ""}
    }


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents


def test_dashboard_parses_and_has_panels() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "outbox-relay.json").read_text())
    assert len(dashboard["panels"]) >= 10
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(panel["targets"] for panel in dashboard["panels"])


def test_alerts_and_dashboard_use_only_real_metrics() -> None:
    known = exported_metric_names()
    for name in ["prometheus/alerts.yml", "grafana/outbox-relay.json"]:
        used = set(METRIC.findall((DEPLOY / name).read_text()))
        assert used, f"{name} uses no outbox-relay metric"
        assert used <= known, f"{name} names metrics that do not exist: {sorted(used - known)}"


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {
        "OutboxBacklogGrowing",
        "OutboxOldestPendingTooOld",
        "OutboxPartitionUnowned",
        "OutboxConsumerParkedMessagesGrowing",
    }
    assert all(r["expr"] and r["annotations"]["description"] for r in rules)


def test_deploy_files_use_only_real_variables_and_commands() -> None:
    variables = documented_variables()
    for name, text in deploy_texts().items():
        unknown = set(VARIABLE.findall(text)) - variables
        assert not unknown, f"{name} sets variables no option reads: {sorted(unknown)}"
    manifests = [
        doc
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    commands = [
        container["args"][0]
        for doc in manifests
        for container in doc.get("spec", {})
        .get("template", {})
        .get("spec", {})
        .get("containers", [])
        if container.get("args")
    ]
    assert set(commands) == {"run", "consume", "migrate"}
    assert set(commands) <= set(main.commands)
    probes = [
        container[probe]["httpGet"]["path"]
        for doc in manifests
        for container in doc.get("spec", {})
        .get("template", {})
        .get("spec", {})
        .get("containers", [])
        for probe in ("livenessProbe", "readinessProbe")
        if probe in container
    ]
    assert sorted(probes) == ["/healthz", "/healthz", "/readyz", "/readyz"]
