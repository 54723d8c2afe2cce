"""A private RabbitMQ node with an AMQP-over-TLS listener configured from its boot.

The shared broker's listeners are never changed by a test: a TLS test starts a node of
its own (tests/support/private_rabbit.py) whose ``rabbitmq.conf`` has the listener
(127.0.0.1 only) and its ``ssl_options``: the test CA, the server certificate for
DNS:localhost and its key, and whether a client certificate is required. The node also
listens for plain AMQP (``rabbit.url``), where a test declares and drains its objects.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.http import free_port
from tests.support.private_rabbit import PrivateRabbit, private_rabbit
from tests.support.tls import Pki

_PROBE_TIMEOUT_S = 2


@dataclass(frozen=True)
class TlsRabbit:
    rabbit: PrivateRabbit
    tls_port: int


def tls_config(pki: Pki, port: int, *, client_certificate_required: bool) -> str:
    """``rabbitmq.conf`` lines for a TLS listener on 127.0.0.1:``port`` presenting
    ``pki``'s server certificate; with ``client_certificate_required`` it refuses
    clients without a certificate signed by ``pki.ca``."""
    verify = "verify_peer" if client_certificate_required else "verify_none"
    required = "true" if client_certificate_required else "false"
    return (
        f"listeners.ssl.local = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {pki.ca}\n"
        f"ssl_options.certfile = {pki.server_cert}\n"
        f"ssl_options.keyfile = {pki.server_key}\n"
        f"ssl_options.verify = {verify}\n"
        f"ssl_options.fail_if_no_peer_cert = {required}\n"
    )


@contextlib.contextmanager
def rabbit_with_tls(
    directory: Path, pki: Pki, *, client_certificate_required: bool
) -> Iterator[TlsRabbit]:
    """A private node keeping its files in ``directory``, with a TLS listener as
    ``tls_config`` describes; stopped on exit, whatever the test did."""
    port = free_port()
    config = tls_config(pki, port, client_certificate_required=client_certificate_required)
    with private_rabbit(directory, config=config) as rabbit:
        yield TlsRabbit(rabbit, port)


def listening(port: int) -> bool:
    """Whether anything accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True
