"""The HTTP endpoints hold a bounded number of threads, whatever clients do, and drop
connections that send nothing (issue 22, item 8)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from outbox_relay.observability.http import IDLE_TIMEOUT_S, REQUEST_TIMEOUT_S, WORKERS, HealthServer

IDLE_CLIENTS = 300
SHORT_S = 1.0  # the timeouts, shortened to keep the tier fast


def test_the_default_timeouts_are_a_few_seconds() -> None:
    assert 1 <= IDLE_TIMEOUT_S <= 10
    assert 1 <= REQUEST_TIMEOUT_S <= 10


@contextlib.contextmanager
def serving(idle_timeout_s: float) -> Iterator[HealthServer]:
    health = HealthServer(
        host="127.0.0.1",
        port=0,
        registry=CollectorRegistry(),
        liveness=lambda: (True, "loop alive"),
        readiness=lambda: (False, "broker not connected"),
        idle_timeout_s=idle_timeout_s,
        request_timeout_s=SHORT_S,
    ).start()
    try:
        yield health
    finally:
        health.close()


@pytest.fixture
def server() -> Iterator[HealthServer]:
    with serving(SHORT_S) as health:
        yield health


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


@contextlib.contextmanager
def idle_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_idle_connections_hold_no_threads_and_probes_still_answer() -> None:
    before = threading.active_count()
    with serving(idle_timeout_s=60) as server, idle_clients(server.port, IDLE_CLIENTS):
        assert get(server.port, "/healthz") == (200, b"ok: loop alive\n")
        assert get(server.port, "/readyz") == (503, b"failing: broker not connected\n")
        status, _ = get(server.port, "/metrics")
        assert status == 200
        assert threading.active_count() <= before + 1 + WORKERS  # the selector thread, the pool


def test_a_connection_that_sends_nothing_is_closed(server: HealthServer) -> None:
    with idle_clients(server.port, 3) as sockets:
        for sock in sockets:
            sock.settimeout(SHORT_S + 10)
            started = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - started < SHORT_S + 10


def test_a_client_that_stops_half_way_does_not_keep_a_worker(server: HealthServer) -> None:
    with idle_clients(server.port, WORKERS * 2) as sockets:
        for sock in sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the blank line
        for sock in sockets:
            sock.settimeout(SHORT_S + 10)
            with contextlib.suppress(ConnectionResetError):
                sock.recv(65536)
        assert get(server.port, "/healthz")[0] == 200


def test_unknown_paths_are_404(server: HealthServer) -> None:
    assert get(server.port, "/nope")[0] == 404
