"""Fixtures for the integration and fault tiers: real services, isolated names.

Each test gets its own schema (dropped afterwards) and its own exchange and queue names
(deleted afterwards), so tests cannot see each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import psycopg
import pytest
from hypothesis import settings

from outbox_relay.store.schema import migrate
from tests.support import services
from tests.support.broker import BrokerHelper

# Shared, noisy machines: a slow example is not a failure.
settings.register_profile("outbox-relay", deadline=None)
settings.load_profile("outbox-relay")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with services.postgres_url() as url:
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            services.unavailable(services.DATABASE_ENV, f"cannot connect to {url}: {exc}")
        yield url


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    with services.amqp_url() as url:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
        except pika.exceptions.AMQPError as exc:
            services.unavailable(services.AMQP_ENV, f"cannot connect to {url}: {exc!r}")
        yield url


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A fresh schema with the outbox migrated into it; dropped after the test."""
    name = unique_name("t")
    migrate(database_url, schema=name)
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(name))
        )


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        yield conn


@pytest.fixture
def broker(amqp_url: str) -> Iterator[BrokerHelper]:
    """Declares test-owned exchanges and queues with unique names and deletes them after."""
    helper = BrokerHelper(amqp_url, prefix=unique_name("t"))
    yield helper
    helper.cleanup()
