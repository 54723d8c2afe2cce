"""TLS: amqps:// with a CA, a client certificate and host name verification; sslmode.

The broker's TLS side is a TLS-terminating proxy in front of its plain port (signed by a
throwaway CA), so the test needs no TLS listener on the shared broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest

import outbox_relay
from outbox_relay.errors import BrokerUnavailableError, StoreUnavailableError
from outbox_relay.publisher import Publisher
from outbox_relay.store.connect import connect
from tests.support.broker import BrokerHelper
from tests.support.proxy import TlsProxy
from tests.support.relay import outbox_rows, running_relay, wait_for
from tests.support.tls import Pki, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_port(pki: Pki, amqp_url: str) -> Iterator[int]:
    target = urlsplit(amqp_url)
    proxy = TlsProxy(
        target.hostname or "127.0.0.1", target.port or 5672, context=pki.server_context()
    )
    try:
        yield proxy.port
    finally:
        proxy.close()


def amqps_url(amqp_url: str, host: str, port: int, **ssl_options: Path | str) -> str:
    target = urlsplit(amqp_url)
    options = {key: str(value) for key, value in ssl_options.items()}
    query = f"?ssl_options={quote(repr(options))}" if options else ""
    return f"amqps://{target.username}:{target.password}@{host}:{port}/%2F{query}"


def test_the_relay_publishes_over_tls_with_a_client_certificate(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, pki: Pki, tls_port: int
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    url = amqps_url(
        amqp_url,
        "localhost",
        tls_port,
        ca_certs=pki.ca,
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )
    with psycopg.connect(database_url) as conn:
        for n in range(20):
            outbox_relay.publish(
                conn, exchange=exchange, routing_key="k", payload={"n": n}, schema=schema
            )
        conn.commit()
    with running_relay(database_url, url, schema):
        assert len(broker.drain(queue, expect=20)) == 20
        assert wait_for(lambda: not outbox_rows(database_url, schema))


@pytest.mark.parametrize(
    ("host", "options", "reason"),
    [
        # The certificate names DNS:localhost only: connecting by IP must fail.
        ("127.0.0.1", {"certfile": "client_cert", "keyfile": "client_key"}, "IP address mismatch"),
        # A broker certificate from a CA we do not trust.
        (
            "localhost",
            {"ca": "other_ca", "certfile": "client_cert", "keyfile": "client_key"},
            "certificate verify failed",
        ),
    ],
)
def test_the_broker_certificate_is_verified(
    amqp_url: str, pki: Pki, tls_port: int, host: str, options: dict[str, str], reason: str
) -> None:
    ca = getattr(pki, options.pop("ca", "ca"))
    files = {key: getattr(pki, value) for key, value in options.items()}
    publisher = Publisher(
        url=amqps_url(amqp_url, host, tls_port, ca_certs=ca, **files), connect_timeout_s=5
    )
    with pytest.raises(BrokerUnavailableError, match=reason):
        publisher.connect()
    publisher.close()


def test_without_a_client_certificate_the_broker_side_refuses(
    amqp_url: str, pki: Pki, tls_port: int
) -> None:
    publisher = Publisher(
        url=amqps_url(amqp_url, "localhost", tls_port, ca_certs=pki.ca), connect_timeout_s=5
    )
    with pytest.raises(BrokerUnavailableError, match="cannot connect to amqps://"):
        publisher.connect()
    publisher.close()


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
