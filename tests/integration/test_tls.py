"""TLS against RabbitMQ's own TLS listener: amqps:// with a CA, host name verification
and client certificates, for the relay and the consumer; sslmode for PostgreSQL.

Each broker-side test runs against a private RabbitMQ node of this module, started with
a TLS listener in its configuration (see tests/support/rabbit_tls.py; the shared broker's
listeners are never changed), with a server certificate for DNS:localhost signed by a
throwaway CA: one node whose listener asks for no client certificate, one whose listener
refuses clients without one (verify_peer, fail_if_no_peer_cert).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pytest

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.errors import BrokerUnavailableError, StoreUnavailableError
from outbox_relay.publisher import Publisher
from outbox_relay.store.connect import connect
from tests.conftest import unique_name
from tests.support.broker import BrokerHelper
from tests.support.consumer import publish, running_consumer
from tests.support.rabbit_tls import TlsRabbit, listening, rabbit_with_tls
from tests.support.relay import outbox_rows, running_relay, wait_for
from tests.support.tls import Pki, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def node(
    factory: pytest.TempPathFactory, pki: Pki, *, client_certificate_required: bool
) -> Iterator[TlsRabbit]:
    directory = factory.mktemp("rabbit")
    with rabbit_with_tls(
        directory, pki, client_certificate_required=client_certificate_required
    ) as rabbit:
        yield rabbit
    assert not listening(rabbit.tls_port), "the node's TLS listener outlived it"


@pytest.fixture(scope="module")
def tls_node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRabbit]:
    """A node whose TLS listener verifies nothing of the client."""
    with node(tmp_path_factory, pki, client_certificate_required=False) as rabbit:
        yield rabbit


@pytest.fixture(scope="module")
def mutual_tls_node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRabbit]:
    """A node whose TLS listener refuses clients without a certificate signed by the
    test CA."""
    with node(tmp_path_factory, pki, client_certificate_required=True) as rabbit:
        yield rabbit


@contextlib.contextmanager
def broker_on(rabbit: TlsRabbit) -> Iterator[BrokerHelper]:
    """Like ``broker``, on ``rabbit``'s plain AMQP listener."""
    helper = BrokerHelper(rabbit.rabbit.url, prefix=unique_name("t"))
    try:
        yield helper
    finally:
        helper.cleanup()


@pytest.fixture
def tls_broker(tls_node: TlsRabbit) -> Iterator[BrokerHelper]:
    with broker_on(tls_node) as helper:
        yield helper


@pytest.fixture
def mutual_tls_broker(mutual_tls_node: TlsRabbit) -> Iterator[BrokerHelper]:
    with broker_on(mutual_tls_node) as helper:
        yield helper


def amqps_url(rabbit: TlsRabbit, host: str, **ssl_options: Path | str) -> str:
    """The node's TLS listener, by ``host``, as its plain listener's user."""
    target = urlsplit(rabbit.rabbit.url)
    options = {key: str(value) for key, value in ssl_options.items()}
    query = f"?ssl_options={quote(repr(options))}" if options else ""
    return f"amqps://{target.username}:{target.password}@{host}:{rabbit.tls_port}/%2F{query}"


def client_certificate(pki: Pki) -> dict[str, Path]:
    return {"certfile": pki.client_cert, "keyfile": pki.client_key}


def connect_error(url: str, *, starts: str) -> str:
    """The error a relay's publisher reports when it cannot connect to ``url``: it names
    the URL (``starts``), never its password."""
    publisher = Publisher(url=url, connect_timeout_s=5)
    try:
        with pytest.raises(BrokerUnavailableError) as raised:
            publisher.connect()
    finally:
        publisher.close()
    message = str(raised.value)
    assert message.startswith(f"cannot connect to {starts}/"), message
    assert f":{urlsplit(url).password}@" not in message
    return message


def relay_rows(database_url: str, url: str, schema: str, broker: BrokerHelper) -> None:
    """20 rows through a relay connected to ``url``; all arrive, none stay."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with psycopg.connect(database_url) as conn:
        for n in range(20):
            outbox_relay.publish(
                conn, exchange=exchange, routing_key="k", payload={"n": n}, schema=schema
            )
        conn.commit()
    with running_relay(database_url, url, schema):
        got = broker.drain(queue, expect=20)
        assert sorted(json.loads(m.body)["n"] for m in got) == list(range(20))
        assert wait_for(lambda: not outbox_rows(database_url, schema))


def test_the_relay_publishes_to_the_brokers_tls_listener_verifying_it(
    database_url: str, schema: str, tls_node: TlsRabbit, tls_broker: BrokerHelper, pki: Pki
) -> None:
    """amqps:// with the CA that signed the broker's certificate, by the name it carries."""
    url = amqps_url(tls_node, "localhost", ca_certs=pki.ca)
    relay_rows(database_url, url, schema, tls_broker)


def test_the_relay_publishes_with_a_client_certificate_where_one_is_required(
    database_url: str,
    schema: str,
    mutual_tls_node: TlsRabbit,
    mutual_tls_broker: BrokerHelper,
    pki: Pki,
) -> None:
    url = amqps_url(mutual_tls_node, "localhost", ca_certs=pki.ca, **client_certificate(pki))
    relay_rows(database_url, url, schema, mutual_tls_broker)


@pytest.mark.parametrize(
    ("host", "ca", "expected"),
    [
        # A CA that signed none of the broker's certificates.
        ("localhost", "other_ca", "point ssl_options ca_certs at the CA file that signed it"),
        # The certificate names DNS:localhost only: connecting by IP must fail.
        ("127.0.0.1", "ca", "does not name the URL's host"),
    ],
)
def test_a_broker_certificate_that_fails_verification_is_refused_saying_what_to_fix(
    pki: Pki, tls_node: TlsRabbit, host: str, ca: str, expected: str
) -> None:
    url = amqps_url(tls_node, host, ca_certs=getattr(pki, ca))
    message = connect_error(url, starts=f"amqps://guest:***@{host}:{tls_node.tls_port}")
    assert "certificate verify failed" in message
    assert expected in message


def test_without_a_client_certificate_the_broker_refuses_saying_what_to_fix(
    pki: Pki, mutual_tls_node: TlsRabbit
) -> None:
    url = amqps_url(mutual_tls_node, "localhost", ca_certs=pki.ca)
    port = mutual_tls_node.tls_port
    message = connect_error(url, starts=f"amqps://guest:***@localhost:{port}")
    assert "set certfile and keyfile in ssl_options" in message


def test_the_consumer_consumes_over_tls_with_a_client_certificate(
    mutual_tls_node: TlsRabbit, mutual_tls_broker: BrokerHelper, pki: Pki
) -> None:
    broker = mutual_tls_broker
    url = amqps_url(mutual_tls_node, "localhost", ca_certs=pki.ca, **client_certificate(pki))
    exchange = broker.exchange()
    app = ConsumerApp(name=f"tls-{uuid.uuid4().hex[:6]}", amqp_url=url)
    received: list[Any] = []

    @app.handler(exchange=exchange, queue=broker.name("tls"), bindings=["#"])
    def on_message(message: Message) -> None:
        received.append(message.body)

    with running_consumer(app, broker) as runner:
        for n in range(5):
            publish(broker, exchange, "k", json.dumps({"n": n}).encode(), message_id=str(n))
        assert wait_for(lambda: len(received) == 5)
        assert runner.connections_opened == 1
    assert sorted(body["n"] for body in received) == list(range(5))


def test_postgres_sslmode_in_the_url_reaches_libpq(database_url: str) -> None:
    """sslmode=require is honoured: over TLS when the server offers it, refused otherwise."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW ssl").fetchone()
    server_has_ssl = row is not None and row[0] == "on"
    separator = "&" if "?" in database_url else "?"
    url = f"{database_url}{separator}sslmode=require"
    if not server_has_ssl:
        with pytest.raises(StoreUnavailableError, match="SSL was required"):
            connect(url, autocommit=True, application_name="sslmode-test")
        return
    with connect(url, autocommit=True, application_name="sslmode-test") as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)
