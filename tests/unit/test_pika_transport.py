"""The fence around pika's private hooks (outbox_relay.publisher.pika_transport).

These tests fail when pika moves a hook the publisher's connection overrides or reads:
then review the module's RELIES_ON, and only then change its PIKA_VERSION."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pika
import pika.adapters.base_connection
import pika.connection
import pytest
from structlog.testing import capture_logs

from outbox_relay.publisher import pika_transport
from outbox_relay.publisher.pika_transport import WRITE_CHUNK_BYTES, ChunkedConnection


class Transport:
    """Stands in for pika's socket transport: records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.writes))


@pytest.fixture
def connection() -> Iterator[ChunkedConnection]:
    # Not connected: pika only starts connecting once its I/O loop runs.
    conn = ChunkedConnection(pika.ConnectionParameters(host="127.0.0.1", port=1))
    try:
        yield conn
    finally:
        conn.ioloop.close()


@pytest.fixture
def reloaded() -> Iterator[None]:
    """Import the module again after the test changed pika, and once more after it."""
    yield
    importlib.reload(pika_transport)


class TestThePikaInstalled:
    def test_the_fence_was_written_for_the_installed_pika(self) -> None:
        assert pika.__version__ == pika_transport.PIKA_VERSION

    def test_every_hook_is_there(self) -> None:
        assert pika_transport.missing_hooks() == ()
        assert pika_transport.MISSING == ()

    @pytest.mark.parametrize(
        ("owner", "name"),
        [
            (pika.adapters.base_connection.BaseConnection, "_adapter_emit_data"),
            (pika.adapters.base_connection.BaseConnection, "_adapter_disconnect_stream"),
            (pika.SelectConnection, "_get_write_buffer_size"),
        ],
    )
    def test_a_hook_that_moved_is_missing(
        self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str
    ) -> None:
        monkeypatch.delattr(owner, name)
        assert name in pika_transport.missing_hooks()

    def test_frames_written_without_the_hook_are_missed(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def output(self: object, frames: object) -> None:
            pass

        monkeypatch.setattr(pika.connection.Connection, "_output_marshaled_frames", output)
        assert pika_transport.missing_hooks() == ("_adapter_emit_data",)

    def test_a_transport_pika_no_longer_keeps_is_missing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def init(self: object, *args: object, **kwargs: object) -> None:
            pass

        monkeypatch.setattr(pika.adapters.base_connection.BaseConnection, "__init__", init)
        assert pika_transport.missing_hooks() == ("_transport",)


class TestChunks:
    def test_held_frames_go_out_joined_in_order(self, connection: ChunkedConnection) -> None:
        transport = Transport()
        connection._transport = transport  # type: ignore[assignment]  # pika's own slot
        connection.holding = True
        for frame in (b"a", b"bb", b"ccc"):
            connection._adapter_emit_data(frame)
        assert transport.writes == []
        connection.release_held()
        assert transport.writes == [b"abbccc"]
        assert connection.unwritten() == 6
        connection._adapter_emit_data(b"d")  # not holding: at once
        assert transport.writes == [b"abbccc", b"d"]

    def test_a_chunk_goes_out_once_it_is_large(self, connection: ChunkedConnection) -> None:
        transport = Transport()
        connection._transport = transport  # type: ignore[assignment]  # pika's own slot
        connection.holding = True
        connection._adapter_emit_data(b"x" * (WRITE_CHUNK_BYTES - 1))
        connection._adapter_emit_data(b"y")
        connection._adapter_emit_data(b"z")
        assert [len(w) for w in transport.writes] == [WRITE_CHUNK_BYTES]
        assert connection.holding

    def test_nothing_is_unwritten_once_pika_dropped_the_transport(
        self, connection: ChunkedConnection
    ) -> None:
        assert connection.unwritten() == 0


class TestFallback:
    @pytest.mark.usefixtures("reloaded")
    def test_without_the_hooks_frames_go_as_in_stock_pika_with_a_warning(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delattr(pika.SelectConnection, "_get_write_buffer_size")
        monkeypatch.setattr(
            pika.connection.Connection, "_output_marshaled_frames", lambda self, frames: None
        )
        module = importlib.reload(pika_transport)
        assert set(module.MISSING) == {"_adapter_emit_data", "_get_write_buffer_size"}
        assert "_adapter_emit_data" not in vars(module.ChunkedConnection)
        with capture_logs() as logs:
            conn = module.ChunkedConnection(pika.ConnectionParameters(host="127.0.0.1", port=1))
            other = module.ChunkedConnection(pika.ConnectionParameters(host="127.0.0.1", port=1))
        other.ioloop.close()
        try:
            transport = Transport()
            conn._transport = transport  # type: ignore[assignment]  # pika's own slot
            conn.holding = True
            conn._adapter_emit_data(b"a")
            conn._adapter_emit_data(b"b")
            assert transport.writes == [b"a", b"b"]  # stock pika: each frame at once
            conn.release_held()
            assert conn.unwritten() == 0
        finally:
            conn.ioloop.close()
        warnings = [entry for entry in logs if entry["event"] == "publisher.pika_hooks_missing"]
        assert len(warnings) == 1  # once per process
        assert warnings[0]["log_level"] == "warning"
        assert set(warnings[0]["missing"]) == {"_adapter_emit_data", "_get_write_buffer_size"}
