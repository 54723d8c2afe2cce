"""The compose example as users run it: PostgreSQL, RabbitMQ, migrate, the relay and the
example shop (deploy/examples/shop.py), brought up by podman-compose on ports of their
own. Orders flow; the broker is stopped for 20 s while the shop keeps ordering; after it
returns every order is billed exactly once."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.deploy.podman import (
    POSTGRES_IMAGE,
    RABBITMQ_IMAGE,
    ROOT,
    environment,
    free_port,
    podman,
)
from tests.support.relay import wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
OUTAGE_S = 20


@dataclass
class Compose:
    project: str
    owner_url: str  # the owner's URL, through the published port

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def counts(self) -> tuple[int, int, int]:
        """Orders placed, invoices written, outbox rows not yet relayed."""
        with psycopg.connect(self.owner_url, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM shop_orders), "
                "(SELECT count(*) FROM billing_invoices), (SELECT count(*) FROM outbox)"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def counts_or_none(self) -> tuple[int, int, int] | None:
        try:
            return self.counts()
        except psycopg.Error:  # not up yet, or the shop's tables not created yet
            return None


def podman_compose(project: str, *args: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["podman-compose", "--project-name", project, "--file", str(COMPOSE_FILE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"podman-compose {args}:\n{result.stdout}{result.stderr}"


def remove_project(project: str) -> None:
    """Everything podman-compose made for ``project``, removed at once (no grace)."""
    label = f"--filter=label=io.podman.compose.project={project}"
    names = podman("ps", "--all", "--quiet", label, check=False).stdout.split()
    if names:
        podman("rm", "--force", "--time=0", *names, check=False)
    podman("network", "rm", "--force", f"{project}_default", check=False)
    volumes = podman("volume", "ls", "--quiet", label, check=False).stdout.split()
    if volumes:
        podman("volume", "rm", "--force", *volumes, check=False)


@pytest.fixture
def compose(relay_image: str) -> Iterator[Compose]:
    project = f"outbox_deploy_{uuid.uuid4().hex[:8]}"
    postgres_port = free_port()
    env = environment(
        RELAY_IMAGE=relay_image,
        POSTGRES_IMAGE=POSTGRES_IMAGE,
        RABBITMQ_IMAGE=RABBITMQ_IMAGE,
        # The machine's own PostgreSQL and RabbitMQ hold 5432 and 5672: publish elsewhere.
        POSTGRES_PORT=str(postgres_port),
        AMQP_PORT=str(free_port()),
    )
    try:
        podman_compose(project, "up", "--detach", env=env)
        yield Compose(
            project, f"postgresql://postgres:owner-secret@127.0.0.1:{postgres_port}/postgres"
        )
    finally:
        remove_project(project)


def logs(compose: Compose, *services: str) -> str:
    out = []
    for service in services:
        result = podman("logs", "--tail=30", compose.container(service), check=False)
        out.append(f"--- {service}\n{result.stdout}{result.stderr}")
    return "\n".join(out)


def test_orders_flow_and_survive_a_broker_outage_billed_once(compose: Compose) -> None:
    everything = ("migrate", "relay", "producer", "consumer")

    # Up: migrate (as the owner) has run, orders are placed, relayed and billed.
    def billing() -> bool:
        counts = compose.counts_or_none()
        return counts is not None and counts[1] >= 5

    assert wait_for(billing, timeout_s=180, interval_s=1), logs(compose, *everything)
    state = podman("inspect", "--format={{.State.ExitCode}}", compose.container("migrate"))
    assert state.stdout.strip() == "0"

    # The image's HEALTHCHECK passes for each role: the relay (9000), the consumer
    # (--http-port 9102) and the producer, which serves no HTTP.
    for service in ("relay", "consumer", "producer"):
        check = podman("healthcheck", "run", compose.container(service), check=False)
        assert check.returncode == 0, (service, check.stdout, check.stderr)

    # The broker goes away for 20 s; the shop keeps taking orders, the outbox keeps them.
    podman("stop", "--time=30", compose.container("rabbitmq"))
    orders_at_stop, _, _ = compose.counts()
    time.sleep(OUTAGE_S)
    orders_after, _, backlog = compose.counts()
    assert orders_after > orders_at_stop + 10, "the shop stopped ordering during the outage"
    assert backlog > 0
    podman("start", compose.container("rabbitmq"))

    # Let the shop order on for a little after the broker returned, then stop it, so
    # the set of orders is final; every one of them ends up billed, exactly once.
    time.sleep(5)
    podman("stop", "--time=10", compose.container("producer"))

    def all_billed() -> bool:
        orders, invoices, left = compose.counts()
        return orders == invoices and left == 0

    assert wait_for(all_billed, timeout_s=180, interval_s=1), (
        compose.counts(),
        logs(compose, "relay", "consumer"),
    )
    with psycopg.connect(compose.owner_url) as conn:
        unbilled_or_wrong = conn.execute(
            "SELECT count(*) FROM shop_orders o LEFT JOIN billing_invoices i "
            "ON i.order_id = o.id WHERE i.total IS DISTINCT FROM o.total"
        ).fetchone()
        deliveries = conn.execute("SELECT count(*) FROM inbox").fetchone()
    assert unbilled_or_wrong == (0,)
    # One inbox row per message: redeliveries after the outage were recognised as
    # duplicates, not billed again.
    orders, invoices, _ = compose.counts()
    assert deliveries == (orders,)
    assert invoices == orders
