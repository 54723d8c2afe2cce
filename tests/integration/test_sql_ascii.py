"""A database created with SQL_ASCII: PostgreSQL does no encoding conversion there, and
psycopg hands text back as bytes unless the connection asks for UTF-8."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

import outbox_relay
from outbox_relay.store.schema import migrate
from tests.support.broker import BrokerHelper
from tests.support.relay import outbox_rows, running_relay, wait_for
from tests.support.schemas import private_database

pytestmark = pytest.mark.integration


@pytest.fixture
def ascii_database_url(database_url: str) -> Iterator[str]:
    with private_database(database_url, encoding="SQL_ASCII") as url:
        yield url


def test_the_relay_publishes_from_a_sql_ascii_database(
    ascii_database_url: str, amqp_url: str, broker: BrokerHelper
) -> None:
    migrate(ascii_database_url, schema="public")
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with psycopg.connect(ascii_database_url) as conn:
        for n in range(5):
            outbox_relay.publish(
                conn, exchange=exchange, routing_key="k", payload={"n": n, "name": "Zoë"}
            )
    with running_relay(ascii_database_url, amqp_url, "public"):
        received = broker.drain(queue, expect=5)
        assert wait_for(lambda: not outbox_rows(ascii_database_url, "public"))
    assert [json.loads(m.body) for m in received] == [{"n": n, "name": "Zoë"} for n in range(5)]
