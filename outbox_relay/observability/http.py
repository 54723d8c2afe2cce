"""A tiny HTTP server for probes and scrapes: /healthz, /readyz and /metrics.

It runs in a daemon thread and only reads state the worker publishes; it never touches
the worker's connections, so a slow scrape cannot stall publishing.

Its cost is bounded whatever clients do: one thread waits (with a selector) on the
listening socket and on every open connection that has not sent anything yet; a
connection is handed to one of ``WORKERS`` threads only once it has data, and is answered
and closed (one request per connection). A connection that sends nothing for
``IDLE_TIMEOUT_S`` is closed, as is the oldest idle one when ``MAX_IDLE_CONNECTIONS`` are
open; a client that stops half-way through its request gives its worker back after
``REQUEST_TIMEOUT_S``.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], tuple[bool, str]]

WORKERS = 4
IDLE_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 5.0
MAX_IDLE_CONNECTIONS = 512
_POLL_S = 0.5


class HealthServer:
    """Serves ``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Probe,
        readiness: Probe,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
            "/healthz": lambda: _probe(liveness),
            "/readyz": lambda: _probe(readiness),
            "/metrics": lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST),
        }

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout_s  # a client that stops half-way frees its worker

            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                status, body, content_type = (
                    route() if route else (404, b"not found\n", "text/plain; charset=utf-8")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Probes every few seconds would drown the structured logs."""

        self._server = _PooledServer((host, port), Handler, idle_timeout_s=idle_timeout_s)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="outbox-relay-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()


class _PooledServer(HTTPServer):
    """An HTTPServer whose connections wait in a selector, not in threads, until they
    have something to read; a fixed pool of threads answers them."""

    request_queue_size = 128  # the listen backlog: a burst of probes is not refused

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        idle_timeout_s: float,
    ) -> None:
        super().__init__(address, handler)
        self.socket.setblocking(False)
        self._idle_timeout_s = idle_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="outbox-relay-http")
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = _POLL_S) -> None:
        idle: dict[socket.socket, float] = {}  # connection -> when it was accepted
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    for key, _ in selector.select(poll_interval):
                        sock = cast(socket.socket, key.fileobj)
                        if sock is self.socket:
                            self._accept(selector, idle)
                        else:
                            selector.unregister(sock)
                            del idle[sock]
                            self._pool.submit(self._answer, sock)
                    self._expire(selector, idle)
            finally:
                for sock in idle:
                    self.shutdown_request(sock)
                self._pool.shutdown(wait=False)  # what was handed over is answered and closed
                self._stopped.set()

    def _accept(self, selector: selectors.BaseSelector, idle: dict[socket.socket, float]) -> None:
        while True:  # every connection waiting in the backlog
            try:
                sock, _ = self.socket.accept()
            except OSError:  # BlockingIOError: none left
                return
            sock.setblocking(True)
            if len(idle) >= MAX_IDLE_CONNECTIONS:
                oldest = min(idle, key=idle.__getitem__)
                selector.unregister(oldest)
                del idle[oldest]
                self.shutdown_request(oldest)
            selector.register(sock, selectors.EVENT_READ)
            idle[sock] = time.monotonic()

    def _expire(self, selector: selectors.BaseSelector, idle: dict[socket.socket, float]) -> None:
        cutoff = time.monotonic() - self._idle_timeout_s
        for sock in [sock for sock, since in idle.items() if since < cutoff]:
            selector.unregister(sock)
            del idle[sock]
            self.shutdown_request(sock)

    def _answer(self, sock: socket.socket) -> None:
        try:
            address = sock.getpeername()
        except OSError:
            address = ("", 0)
        try:
            self.finish_request(sock, address)
        except OSError:
            pass  # the client went away or timed out: nothing to answer
        finally:
            self.shutdown_request(sock)

    def shutdown(self) -> None:
        self._stopping.set()
        self._stopped.wait(5)


def _probe(check: Probe) -> tuple[int, bytes, str]:
    ok, detail = check()
    return (
        (200 if ok else 503),
        f"{'ok' if ok else 'failing'}: {detail}\n".encode(),
        "text/plain; charset=utf-8",
    )
