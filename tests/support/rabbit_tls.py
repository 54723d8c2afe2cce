"""A TLS listener on the test broker itself, started at runtime and stopped after.

RabbitMQ (3.10 and later) starts an AMQP-over-TLS listener from a running node with
``rabbit_networking:start_ssl_listener/3`` and stops it with ``stop_tcp_listener/1``,
the functions its boot step uses for the ``listeners.ssl`` setting. Calling them through
``rabbitmqctl eval`` leaves the broker's configuration files alone, and nothing survives
a restart of the node.

The broker reads the certificate files itself (as the ``rabbitmq`` user), so they are
copied into a directory anyone may read: the throwaway test keys are not secrets.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.services import in_ci
from tests.support.tls import Pki

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_EVAL_TIMEOUT_S = 30


def _unavailable(reason: str) -> None:
    message = (
        f"a TLS listener cannot be started on the test broker ({reason}); these tests need "
        "`rabbitmqctl` for the broker at OUTBOX_RELAY_TEST_AMQP_URL, on this host"
    )
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _eval(expression: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "eval", expression],
        capture_output=True,
        text=True,
        timeout=_EVAL_TIMEOUT_S,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl eval {expression!r} failed: {output}")
    return output


def _erlang_string(value: str | Path) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


def _readable_copy(pki: Pki, directory: Path) -> dict[str, Path]:
    directory.chmod(0o755)
    files = {"cacertfile": pki.ca, "certfile": pki.server_cert, "keyfile": pki.server_key}
    copies = {}
    for option, source in files.items():
        target = directory / source.name
        shutil.copyfile(source, target)
        target.chmod(0o644)
        copies[option] = target
    return copies


@contextlib.contextmanager
def broker_tls_listener(
    amqp_url: str, pki: Pki, *, client_certificate_required: bool
) -> Iterator[int]:
    """Yield the port of a TLS listener on the broker at ``amqp_url``, presenting
    ``pki``'s server certificate (DNS:localhost); with ``client_certificate_required``
    it refuses clients without a certificate signed by ``pki.ca``. Stopped on exit,
    whatever the test did."""
    if (urlsplit(amqp_url).hostname or "") not in _LOOPBACK:
        _unavailable(f"the broker at {urlsplit(amqp_url).hostname} is not on this host")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH")
    with tempfile.TemporaryDirectory(prefix="outbox-relay-tls-") as tmp:
        files = _readable_copy(pki, Path(tmp))
        options = [f"{{{option}, {_erlang_string(path)}}}" for option, path in files.items()]
        if client_certificate_required:
            options += ["{verify, verify_peer}", "{fail_if_no_peer_cert, true}"]
        else:
            options += ["{verify, verify_none}"]
        port = _free_port()
        listener = f'{{"127.0.0.1", {port}}}'
        # ensure_ssl starts the ssl application, as the broker's boot step does.
        started = _eval(
            "rabbit_networking:ensure_ssl(), "
            f"rabbit_networking:start_ssl_listener({listener}, [{', '.join(options)}], 1)."
        )
        if started != "ok":
            raise RuntimeError(f"the broker did not start a TLS listener on {port}: {started}")
        try:
            yield port
        finally:
            _eval(f"rabbit_networking:stop_tcp_listener({listener}).")


def tls_listener_ports() -> list[int]:
    """Ports of the broker's TLS listeners on this node (to check none is left behind)."""
    output = _eval(
        "[Port || {listener, _, 'amqp/ssl', _, _, Port, _} "
        "<- rabbit_networking:active_listeners()]."
    )
    return [int(port) for port in output.strip("[] \n").split(",") if port.strip()]
