"""The deploy files parse, and name only metrics, commands and variables that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from outbox_relay.cli import main
from outbox_relay.observability.consumer_metrics import ConsumerMetrics
from outbox_relay.observability.relay_metrics import BacklogCollector, RelayMetrics
from tests.support.scripts import load_script

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


def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a workload's pod template, init containers first."""
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


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
    commands = [
        container["args"][0]
        for doc in manifests()
        for container in pod_containers(doc)
        if container.get("args")
    ]
    assert set(commands) == {"run", "consume", "migrate"}
    assert set(commands) <= set(main.commands)
    probes = [
        container[probe]["httpGet"]["path"]
        for doc in manifests()
        for container in pod_containers(doc)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        if probe in container
    ]
    assert set(probes) == {"/healthz", "/readyz"}


# Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29.
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "path", sorted((DEPLOY / "kubernetes").glob("*.yaml")), ids=lambda p: p.name
)
def test_manifests_pass_the_kubernetes_schemas(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        # strict: a field the schema does not know (a typo) fails too
        kubernetes_validate.validate(doc, version, strict=True)


def workload(file: str, kind: str) -> dict[str, Any]:
    path = DEPLOY / "kubernetes" / file
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
    return dict(doc)


def test_the_sidecar_relay_cannot_make_its_application_unready() -> None:
    pod = workload("relay-sidecar.yaml", "Deployment")["spec"]["template"]["spec"]
    (relay,) = [c for c in pod["initContainers"] if c["name"] == "outbox-relay"]
    assert relay["restartPolicy"] == "Always"  # a native sidecar
    assert relay["args"] == ["run"]
    assert "readinessProbe" not in relay
    assert relay["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert all(c["name"] != "outbox-relay" for c in pod["containers"])
    text = (DEPLOY / "kubernetes" / "relay-sidecar.yaml").read_text()
    assert "NO readinessProbe" in text


def test_the_relay_as_its_own_deployment_is_ready_only_when_connected() -> None:
    (relay,) = workload("relay-deployment.yaml", "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    assert relay["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_consumer_worker_is_probed_for_liveness_only() -> None:
    (consumer,) = workload("consumer.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "readinessProbe" not in consumer
    assert consumer["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert consumer["livenessProbe"]["httpGet"]["path"] == "/healthz"


def secrets_used(container: dict[str, Any]) -> set[str]:
    return {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_each_role_has_its_own_secret_and_migrate_runs_as_the_owner() -> None:
    (migrate,) = workload("relay-sidecar.yaml", "Job")["spec"]["template"]["spec"]["containers"]
    pod = workload("relay-sidecar.yaml", "Deployment")["spec"]["template"]["spec"]
    (relay,) = pod["initContainers"]
    (app,) = pod["containers"]
    assert secrets_used(migrate) == {"outbox-owner"}
    assert secrets_used(relay) == {"outbox-relay"}
    assert secrets_used(app) == {"orders-app-db"}
    secrets = {
        doc["metadata"]["name"]: doc["stringData"] for doc in manifests() if doc["kind"] == "Secret"
    }
    users = {
        name: {urlsplit(url).username for url in data.values()} for name, data in secrets.items()
    }
    assert users["outbox-owner"].isdisjoint(users["outbox-relay"] | users["orders-app-db"])
    assert users["outbox-relay"].isdisjoint(users["orders-app-db"] | users["billing-consumer-urls"])


def test_compose_gives_each_part_its_own_database_role() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    roles = {
        name: urlsplit(service["environment"]["OUTBOX_RELAY_DATABASE_URL"]).username
        for name, service in services.items()
        if "OUTBOX_RELAY_DATABASE_URL" in service.get("environment", {})
    }
    assert roles == {
        "migrate": "postgres",
        "relay": "relay",
        "producer": "shop",
        "consumer": "billing",
    }
    created = (DEPLOY / "examples" / "roles.sql").read_text()
    for role in ("relay", "shop", "billing"):
        assert f"CREATE ROLE {role} LOGIN" in created


def test_the_image_builds_on_any_base_runs_as_a_user_and_gets_sigterm() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0].startswith("ARG BASE_IMAGE=python:3.")
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms
    assert all(line.startswith("FROM ${BASE_IMAGE}") for line in froms)
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["outbox-relay"]  # exec form
    healthcheck = " ".join(lines[lines.index(next(x for x in lines if "HEALTHCHECK" in x)) :][:2])
    assert "outbox-relay-healthcheck" in healthcheck
    assert "9000" not in healthcheck


def test_the_build_context_leaves_out_environments_and_caches() -> None:
    ignored = {
        line.strip()
        for line in (DEPLOY.parent / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "**/__pycache__", ".mypy_cache", "dist"} <= ignored


PORT = ["--http-port", "9102"]


@pytest.mark.parametrize(
    ("argv", "environ", "port"),
    [
        (["/usr/local/bin/outbox-relay", "run"], {"OUTBOX_RELAY_HTTP_PORT": "9000"}, 9000),
        (["/usr/local/bin/outbox-relay", "run"], {}, 0),
        (["/usr/local/bin/outbox-relay", "run", "--http-port", "9101"], {}, 9101),
        (["outbox-relay", "run", "--http-port=9103"], {"OUTBOX_RELAY_HTTP_PORT": "9000"}, 9103),
        (
            ["/usr/bin/python3", "/usr/local/bin/outbox-relay", "consume", "shop:app", *PORT],
            {"OUTBOX_RELAY_HTTP_PORT": "9000"},
            9102,
        ),
        (["python", "-m", "outbox_relay", "consume", "a:b"], {"OUTBOX_RELAY_HTTP_PORT": "9"}, 9),
        (["outbox-relay", "run", "--http-port", "0"], {"OUTBOX_RELAY_HTTP_PORT": "9000"}, 0),
        # a producer, migrate, status: nothing served, nothing to fail
        (["python", "/examples/shop.py", "produce"], {"OUTBOX_RELAY_HTTP_PORT": "9000"}, 0),
        (["/usr/local/bin/outbox-relay", "migrate"], {"OUTBOX_RELAY_HTTP_PORT": "9000"}, 0),
        (["/usr/local/bin/outbox-relay", "status"], {"OUTBOX_RELAY_HTTP_PORT": "9000"}, 0),
        (["sh", "-c", "outbox-relay migrate && python /examples/shop.py setup"], {}, 0),
    ],
)
def test_the_healthcheck_probes_the_port_the_command_serves(
    argv: list[str], environ: dict[str, str], port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    healthcheck = load_script(DEPLOY / "healthcheck.py", "healthcheck", monkeypatch)
    assert healthcheck.served_port(argv, environ) == port
