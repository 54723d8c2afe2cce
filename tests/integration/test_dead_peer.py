"""The dead-peer settings reach the relay's real sockets, to the broker and the database."""

from __future__ import annotations

import os
import socket

import pytest

from outbox_relay.publisher import Publisher
from outbox_relay.store.relay_store import PostgresStore

pytestmark = pytest.mark.integration

# --dead-peer-timeout 8: probes after 4 s, every 1 s, 3 of them; 8000 ms unacknowledged.
EXPECTED = (True, 4, 1, 3, 8000)


def tcp_settings(sock: socket.socket) -> tuple[bool, int, int, int, int]:
    tcp = socket.IPPROTO_TCP
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
        sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
        sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
        sock.getsockopt(tcp, socket.TCP_KEEPCNT),
        sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
    )


def test_the_broker_connection_has_keepalives_and_a_user_timeout(amqp_url: str) -> None:
    publisher = Publisher(url=amqp_url, dead_peer_timeout_s=8)
    publisher.connect()
    try:
        sock = publisher._conn._transport._sock  # type: ignore[union-attr]  # pika internals
        assert tcp_settings(sock) == EXPECTED
    finally:
        publisher.close()


def test_both_database_connections_have_keepalives_and_a_user_timeout(
    database_url: str, schema: str
) -> None:
    store = PostgresStore(
        url=database_url, schema=schema, relay_id="dead-peer", lease_ttl_s=8, dead_peer_timeout_s=8
    )
    store.connect()
    try:
        for conn in (*store.work_connections(), store.listen_connection()):
            with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                assert tcp_settings(sock) == EXPECTED
    finally:
        store.close()
