"""The deadline of a database round trip: past it, the socket is shut down under the
waiting call, a warning names the connection, and the caller gets StoreUnavailableError.

The round trip here waits on one end of a socket pair, as psycopg waits on its socket;
the real thing, through a proxy that goes silent, is in tests/faults/test_silent_connections.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox_relay.errors import StoreError, StoreUnavailableError
from outbox_relay.store.deadline import Deadlines, guarded


class FakePgConn:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock.fileno()


class FakeConnection:
    """What the deadline uses of a psycopg connection: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.pgconn = FakePgConn(sock)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def wait_for_answer(sock: socket.socket) -> bytes:
    """Like psycopg: block until the peer answers; a closed socket is an OperationalError."""
    data = sock.recv(16)
    if not data:
        raise psycopg.OperationalError("server closed the connection unexpectedly")
    return data


def as_connection(sock: socket.socket) -> psycopg.Connection[Any]:
    return cast("psycopg.Connection[Any]", FakeConnection(sock))


class TestDeadlines:
    def test_a_round_trip_without_an_answer_ends_after_the_timeout(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        mine, _silent_peer = pair
        deadlines = Deadlines(timeout_s=0.3, owner="relay")
        started = time.monotonic()
        with (
            capture_logs() as logs,
            pytest.raises(StoreUnavailableError, match=r"no answer within 0.3 s") as caught,
            guarded(deadlines, as_connection(mine), connection="work", action="claiming rows"),
        ):
            wait_for_answer(mine)
        deadlines.close()
        assert time.monotonic() - started < 2
        assert "relay's work connection" in str(caught.value)
        assert "claiming rows" in str(caught.value)
        (warning,) = logs
        assert warning["event"] == "store.no_answer"
        assert warning["log_level"] == "warning"
        assert warning["connection"] == "work"
        assert warning["operation"] == "claiming rows"
        assert "new one replaces it" in warning["action"]

    def test_an_answer_within_the_deadline_changes_nothing(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        mine, peer = pair
        peer.sendall(b"answer")
        deadlines = Deadlines(timeout_s=5, owner="relay")
        with (
            capture_logs() as logs,
            deadlines.round_trip(as_connection(mine), connection="work", what="x"),
        ):
            assert wait_for_answer(mine) == b"answer"
        deadlines.close()
        assert logs == []
        peer.sendall(b"again")
        assert mine.recv(16) == b"again"  # the socket still works

    def test_an_answer_that_comes_after_the_deadline_is_still_too_late(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        mine, _peer = pair
        deadlines = Deadlines(timeout_s=0.2, owner="relay")
        with (
            capture_logs(),
            pytest.raises(StoreUnavailableError, match="no answer"),
            deadlines.round_trip(as_connection(mine), connection="LISTEN", what="x"),
        ):
            time.sleep(0.6)  # busy, not waiting on the socket: the deadline passes
        deadlines.close()
        assert mine.recv(16) == b""  # shut down

    def test_other_errors_pass_through(self, pair: tuple[socket.socket, socket.socket]) -> None:
        mine, _peer = pair
        deadlines = Deadlines(timeout_s=5, owner="relay")
        with (
            pytest.raises(StoreError, match="database error while x: boom"),
            guarded(deadlines, as_connection(mine), connection="work", action="x"),
        ):
            raise psycopg.DataError("boom")
        deadlines.close()

    def test_zero_means_no_deadline_and_no_thread(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        mine, peer = pair
        deadlines = Deadlines(timeout_s=0, owner="relay")
        before = threading.active_count()
        with deadlines.round_trip(as_connection(mine), connection="work", what="x"):
            assert threading.active_count() == before
            peer.sendall(b"late")
            assert wait_for_answer(mine) == b"late"
