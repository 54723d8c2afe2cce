"""A small TCP proxy for fault tests: forward to a real service, cut or refuse on demand."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class TcpProxy:
    """Listens on 127.0.0.1:<ephemeral> and forwards to ``target``.

    ``accepting = False`` refuses new connections (the service looks down);
    :meth:`cut` drops every open connection (a network cut); ``stalled`` set stops
    reading and forwarding both ways (a peer that hangs); ``reads_stalled`` set stops
    reading what the client sends while the service's answers still reach it (a peer that
    stops reading its socket); :meth:`go_silent` stops forwarding for good on every
    connection open then or opened until :meth:`back_again`, without closing any (a NAT
    entry that expired, a failover address that moved: no FIN, no RST), while the
    connections opened after :meth:`back_again` work; :meth:`close` stops it.

    A stalled proxy's kernel still acknowledges what fits in its receive buffer, so the
    client sees a stall at the TCP level only once that buffer is full and the window
    closes. ``receive_buffer_bytes`` makes the buffer small (and fixed), so a client
    that keeps sending meets the zero window within a few kilobytes.
    """

    def __init__(
        self, target_host: str, target_port: int, *, receive_buffer_bytes: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        if receive_buffer_bytes is not None:  # accepted connections inherit it
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.accepting = True
        self.stalled = threading.Event()
        self.reads_stalled = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._silent = False
        self._dead: set[socket.socket] = set()  # client sockets never forwarded again
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                if self._silent:
                    self._dead.add(client)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed.is_set():
                watched = [b] if self.reads_stalled.is_set() else [a, b]
                readable, _, _ = select.select(watched, [], [], 0.1)
                if self.stalled.is_set() or a in self._dead:
                    time.sleep(0.1)  # readable stays readable: do not spin
                    continue
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket cut() just closed
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def go_silent(self) -> None:
        """The network goes silent: the open connections, and those opened until
        :meth:`back_again`, forward nothing ever again and stay open."""
        with self._lock:
            self._silent = True
            self._dead.update(client for client, _ in self._pairs)

    def silence_newest(self) -> None:
        """Only the connection opened last goes silent, for good."""
        with self._lock:
            self._dead.add(self._pairs[-1][0])

    def back_again(self) -> None:
        """New connections work again; the ones that went silent stay silent."""
        with self._lock:
            self._silent = False

    def upstream_ports(self) -> set[int]:
        """Local ports of the proxy's connections to the service: the service sees the
        proxied clients as coming from these."""
        with self._lock:
            pairs = list(self._pairs)
        ports = set()
        for _, upstream in pairs:
            with contextlib.suppress(OSError):
                ports.add(upstream.getsockname()[1])
        return ports

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(2)
