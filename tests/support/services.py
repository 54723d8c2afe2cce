"""Where the real PostgreSQL and RabbitMQ are: environment, else testcontainers, else fail/skip.

Nothing here connects at import time; fixtures call these lazily.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

DATABASE_ENV = "OUTBOX_RELAY_TEST_DATABASE_URL"
AMQP_ENV = "OUTBOX_RELAY_TEST_AMQP_URL"

HOW_TO = (
    "set {env} to a running {what} (for example {example}), or run a Docker engine so "
    "testcontainers can start one. On Debian: {start}."
)
_HINTS = {
    DATABASE_ENV: {
        "what": "PostgreSQL",
        "example": "postgresql://postgres@127.0.0.1:5432/test",
        "start": "apt-get install postgresql && pg_ctlcluster 15 main start",
    },
    AMQP_ENV: {
        "what": "RabbitMQ",
        "example": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "start": "apt-get install rabbitmq-server && rabbitmq-server -detached",
    },
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(env: str, detail: str) -> None:
    """Fail under CI, skip locally, always saying how to provide the service."""
    message = f"{_HINTS[env]['what']} is not available ({detail}): " + HOW_TO.format(
        env=env, **_HINTS[env]
    )
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def docker_available() -> bool:
    try:
        import docker  # noqa: PLC0415 - optional, only when no URL is set
    except ImportError:
        return False
    try:
        docker.from_env().ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    url = os.environ.get(DATABASE_ENV)
    if url:
        yield url
        return
    if not docker_available():
        unavailable(DATABASE_ENV, f"{DATABASE_ENV} is unset and no Docker engine answers")
    from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield container.get_connection_url()


@contextlib.contextmanager
def amqp_url() -> Iterator[str]:
    url = os.environ.get(AMQP_ENV)
    if url:
        yield url
        return
    if not docker_available():
        unavailable(AMQP_ENV, f"{AMQP_ENV} is unset and no Docker engine answers")
    from testcontainers.rabbitmq import RabbitMqContainer  # noqa: PLC0415

    with RabbitMqContainer("rabbitmq:3.13-management-alpine") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        yield f"amqp://guest:guest@{host}:{port}/%2F"
