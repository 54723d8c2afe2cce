"""The publisher adapter against a real broker: closing never leaks a socket."""

from __future__ import annotations

import gc
import time
import warnings
from urllib.parse import urlsplit, urlunsplit

import pytest

from outbox_relay.publisher import Publisher
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.integration


def test_closing_over_a_stalled_connection_drops_the_socket(amqp_url: str) -> None:
    target = urlsplit(amqp_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    try:
        proxied = urlunsplit(
            target._replace(netloc=f"{target.username}:{target.password}@127.0.0.1:{proxy.port}")
        )
        publisher = Publisher(url=proxied)
        publisher.connect()
        proxy.stalled.set()  # like a broker in a memory alarm: Connection.Close is never answered
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            publisher.close()
            gc.collect()
        assert time.monotonic() - started < 10
        assert not publisher.connected
        leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaks, [str(w.message) for w in leaks]
    finally:
        proxy.close()
