"""The image as users run it: the relay container against the machine's PostgreSQL and
RabbitMQ (host network, a schema and an exchange of its own), its HEALTHCHECK, `status`,
and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import outbox_relay
from tests.deploy.podman import LABEL, free_port, podman
from tests.support.broker import BrokerHelper
from tests.support.relay import wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(300)]


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return int(reply.status)
    except OSError:
        return 0


@pytest.fixture
def container_schema(database_url: str) -> Iterator[str]:
    """A schema name of this test's own, dropped afterwards (the container migrates it)."""
    name = f"deploy_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; removed afterwards, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--time=0", name, check=False)


def run_args(name: str, database_url: str, amqp_url: str, schema: str, port: int) -> list[str]:
    return [
        f"--name={name}",
        f"--label={LABEL}=1",
        "--network=host",
        "--read-only",  # as the Kubernetes manifests run it (readOnlyRootFilesystem)
        f"--env=OUTBOX_RELAY_DATABASE_URL={database_url}",
        f"--env=OUTBOX_RELAY_AMQP_URL={amqp_url}",
        f"--env=OUTBOX_RELAY_SCHEMA={schema}",
        f"--env=OUTBOX_RELAY_HTTP_PORT={port}",
    ]


def test_the_relay_container_relays_reports_health_and_stops_cleanly(
    relay_image: str,
    database_url: str,
    amqp_url: str,
    container_schema: str,
    broker: BrokerHelper,
    containers: list[str],
) -> None:
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    common = run_args(f"deploy-relay-{tag}", database_url, amqp_url, container_schema, port)

    migrate = podman("run", "--rm", *common[1:], relay_image, "migrate")
    assert f"schema '{container_schema}'" in migrate.stdout + migrate.stderr

    containers.append(f"deploy-relay-{tag}")
    podman("run", "--detach", *common, relay_image)
    assert wait_for(lambda: healthz(port) == 200, timeout_s=30)

    # Not root: the image's user.
    assert podman("exec", f"deploy-relay-{tag}", "id", "-u").stdout.strip() == "10001"

    # The image's HEALTHCHECK finds the port the relay serves and passes.
    podman("healthcheck", "run", f"deploy-relay-{tag}")
    health = podman("inspect", "--format={{.State.Health.Status}}", f"deploy-relay-{tag}")
    assert health.stdout.strip() == "healthy"

    # It relays: a message written in a transaction arrives on this test's exchange.
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn, exchange=exchange, routing_key="k", payload={"n": 1}, schema=container_schema
        )
        conn.commit()
    (received,) = broker.drain(queue, expect=1, timeout_s=20)
    assert json.loads(received.body) == {"n": 1}

    # `status` in a second container sees the running relay and an empty backlog.
    status = podman("run", "--rm", *common[1:], relay_image, "status", "--json")
    report = json.loads(status.stdout)
    assert len(report["relays"]) == 1, report

    # SIGTERM reaches outbox-relay as PID 1: it settles and exits 0 well within the grace.
    podman("stop", "--time=20", f"deploy-relay-{tag}")
    state = podman("inspect", "--format={{.State.ExitCode}}", f"deploy-relay-{tag}")
    assert state.stdout.strip() == "0"
    logs = podman("logs", f"deploy-relay-{tag}")  # the relay logs JSON lines to stderr
    lines = (logs.stdout + logs.stderr).splitlines()
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert events[-2:] == ["relay.stopping", "relay.stopped"]


def start_idle(image: str, containers: list[str], *argv: str) -> str:
    """A container of ``image`` whose process sleeps, with ``argv`` on its command line."""
    name = f"deploy-idle-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    idle = ["--entrypoint=python", image, "-c", "import time; time.sleep(120)", *argv]
    podman("run", "--detach", f"--name={name}", f"--label={LABEL}=1", *idle)
    return name


def test_the_healthcheck_passes_for_a_container_that_serves_no_http(
    relay_image: str, containers: list[str]
) -> None:
    # A producer (the compose example's) runs a script from the image, with the image's
    # OUTBOX_RELAY_HTTP_PORT=9000 still set: nothing listens there, nothing to fail.
    name = start_idle(relay_image, containers)
    podman("healthcheck", "run", name)
    health = podman("inspect", "--format={{.State.Health.Status}}", name)
    assert health.stdout.strip() == "healthy"


def test_the_healthcheck_fails_when_the_served_port_does_not_answer(
    relay_image: str, containers: list[str]
) -> None:
    # A process whose command line is `outbox-relay consume ... --http-port 9102` but that
    # serves nothing there (a consumer whose HTTP server died): unhealthy.
    argv = ["outbox-relay", "consume", "app:app", "--http-port", "9102"]
    name = start_idle(relay_image, containers, *argv)
    result = podman("healthcheck", "run", name, check=False)
    assert result.returncode == 1, result
