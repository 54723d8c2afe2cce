"""A tiny HTTP server for probes and scrapes: /healthz, /readyz and /metrics.

It runs in a daemon thread and only reads state the worker publishes; it never touches
the worker's connections, so a slow scrape cannot stall publishing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], tuple[bool, str]]


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
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
            "/healthz": lambda: _probe(liveness),
            "/readyz": lambda: _probe(readiness),
            "/metrics": lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST),
        }

        class Handler(BaseHTTPRequestHandler):
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

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
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
        self._server.server_close()
        self._thread.join(5)


def _probe(check: Probe) -> tuple[int, bytes, str]:
    ok, detail = check()
    return (
        (200 if ok else 503),
        f"{'ok' if ok else 'failing'}: {detail}\n".encode(),
        "text/plain; charset=utf-8",
    )
