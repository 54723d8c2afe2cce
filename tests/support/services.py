"""Where the real PostgreSQL and RabbitMQ are, found the way `make demo` finds them.

For each service, in order:

1. its ``OUTBOX_RELAY_TEST_*`` variable, when set (nothing is probed);
2. the default local URLs, the first that answers (PostgreSQL: the ``test`` database,
   else ``postgres``, as ``postgres`` on 127.0.0.1:5432; RabbitMQ: guest on 127.0.0.1:5672);
3. a container started by testcontainers, when a Docker engine answers;
4. otherwise the tests that need it skip with one line saying how to start it, or fail
   under ``CI=true``.

Nothing here connects at import time; the session fixtures call ``service_url`` lazily.
Probes use short timeouts and close what they open (``filterwarnings = error`` turns a
leaked socket into a test error).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn
from urllib.parse import urlsplit

import pika
import pika.exceptions
import psycopg
import pytest

from outbox_relay.urls import redact_url

DATABASE_ENV = "OUTBOX_RELAY_TEST_DATABASE_URL"
AMQP_ENV = "OUTBOX_RELAY_TEST_AMQP_URL"
PROBE_TIMEOUT_S = 2
DOCKER_SOCKET = "unix:///var/run/docker.sock"

Source = Literal["env", "defaults", "testcontainers"]


@dataclass(frozen=True)
class Found:
    """Where a service is; ``url`` is None until testcontainers has started one."""

    url: str | None
    source: Source


@dataclass(frozen=True)
class Service:
    name: str
    env: str
    defaults: tuple[str, ...]
    start: str  # how to start it locally, for the skip message


POSTGRES = Service(
    name="PostgreSQL",
    env=DATABASE_ENV,
    defaults=(
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://postgres@127.0.0.1:5432/postgres",
    ),
    start="pg_ctlcluster --skip-systemctl-redirect 15 main start",
)
AMQP = Service(
    name="RabbitMQ",
    env=AMQP_ENV,
    defaults=("amqp://guest:guest@127.0.0.1:5672/%2F",),
    start="rabbitmq-server -detached",
)


def resolve(
    env_value: str | None,
    defaults: Sequence[str],
    answers: Callable[[str], bool],
    docker_answers: Callable[[], bool],
) -> Found | None:
    """The variable, else the first default that answers, else testcontainers if Docker
    answers, else None. Probes only as far as it must."""
    if env_value:
        return Found(env_value, "env")
    for url in defaults:
        if answers(url):
            return Found(url, "defaults")
    if docker_answers():
        return Found(None, "testcontainers")
    return None


# How the skips of a missing service begin (pytest prefixes "Skipped: "), so the report
# can fold them into one line.
SKIP_PREFIXES = tuple(f"Skipped: {service.name}: " for service in (POSTGRES, AMQP))


def unavailable_reason(service: Service) -> str:
    tried = " or ".join(service.defaults)
    return (
        f"{service.name}: nothing answers at {tried} and no Docker engine runs; "
        f"start it (`{service.start}`) or set {service.env} to yours"
    )


def summary_line(found: Mapping[str, Found]) -> str:
    where = ", ".join(
        f"{name} at {redact_url(f.url or '?')} (from {f.source})"
        for name, f in sorted(found.items())
    )
    return f"services: {where}"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(message: str) -> NoReturn:
    """Fail under CI, skip locally; ``message`` says what is missing and how to fix it."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# -- probes ---------------------------------------------------------------------------


def postgres_answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_S).close()
    except psycopg.Error:
        return False
    return True


def rabbitmq_answers(url: str) -> bool:
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    parameters.socket_timeout = PROBE_TIMEOUT_S
    parameters.stack_timeout = PROBE_TIMEOUT_S
    try:
        pika.BlockingConnection(parameters).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def _socket_answers(docker_host: str) -> bool:
    """Whether anything listens where the Docker client would connect; checked with a
    socket of our own so a refused connection leaks nothing."""
    parts = urlsplit(docker_host)
    try:
        if parts.scheme in {"unix", "http+unix"}:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(PROBE_TIMEOUT_S)
                probe.connect(parts.path)
        elif parts.scheme in {"tcp", "http", "https"} and parts.hostname:
            address = (parts.hostname, parts.port or 2375)
            socket.create_connection(address, timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True  # another scheme (ssh, npipe): let the Docker client decide


def docker_answers() -> bool:
    if not _socket_answers(os.environ.get("DOCKER_HOST", DOCKER_SOCKET)):
        return False
    try:
        import docker
    except ImportError:
        return False
    client = docker.from_env(timeout=PROBE_TIMEOUT_S)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


# -- the session's services -----------------------------------------------------------


def _find(service: Service, answers: Callable[[str], bool]) -> Found:
    found = resolve(os.environ.get(service.env), service.defaults, answers, docker_answers)
    if found is None:
        unavailable(unavailable_reason(service))
    return found


@contextlib.contextmanager
def postgres_url() -> Iterator[Found]:
    found = _find(POSTGRES, postgres_answers)
    if found.url is not None:
        yield found
        return
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield Found(container.get_connection_url(), "testcontainers")


@contextlib.contextmanager
def amqp_url() -> Iterator[Found]:
    found = _find(AMQP, rabbitmq_answers)
    if found.url is not None:
        yield found
        return
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-management-alpine") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        yield Found(f"amqp://guest:guest@{host}:{port}/%2F", "testcontainers")
