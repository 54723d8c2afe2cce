"""The publisher's connection: pika's ``SelectConnection`` writing frames in large chunks.

pika hands each frame to its transport on its own and the transport sends each with a
``send()`` of its own: three system calls, and with TCP_NODELAY three TCP segments for
the broker to read, per message (profiled: 40 % of the relay's CPU went to those sends).
:class:`ChunkedConnection` holds frames back while :attr:`~ChunkedConnection.holding`
and writes them joined, in order, WRITE_CHUNK_BYTES at a time and on
:meth:`~ChunkedConnection.release_held`. Nothing is reordered: the I/O loop, where pika
answers the broker and sends heartbeats, does not run while frames are held, and every
wait runs it only after ``release_held``.

That takes pika's private hooks, listed in :data:`RELIES_ON`; this is the one module of
the publisher that touches them. At import it checks that they are there
(:data:`MISSING`). When pika has moved one, the connection falls back to what stock pika
does (every frame written at once; no measure of what is left to write; a stalled socket
left to pika's own close) and logs ``publisher.pika_hooks_missing`` once: publishing
still works, more slowly. tests/unit/test_pika_transport.py fails on such a pika, and on
any version but ``PIKA_VERSION``, until someone has checked the hooks again.
"""

from __future__ import annotations

from typing import Any

import pika
import pika.adapters.base_connection
import pika.connection
import structlog

PIKA_VERSION = "1.4.4"
RELIES_ON = (
    "pika.connection.Connection._output_marshaled_frames() calls self._adapter_emit_data",
    "BaseConnection._adapter_emit_data(data) writes data to self._transport",
    "BaseConnection._adapter_disconnect_stream() aborts the transport, as pika on a stream error",
    "BaseConnection.__init__ sets self._transport; pika sets it to None once the stream is lost",
    "SelectConnection._get_write_buffer_size() -> bytes the transport has yet to write",
)
# Frames of a batch are handed to the socket in writes of about this size.
WRITE_CHUNK_BYTES = 128 * 1024

log = structlog.get_logger("outbox_relay.publisher")

_Base = pika.adapters.base_connection.BaseConnection


def missing_hooks() -> tuple[str, ...]:
    """The hooks of :data:`RELIES_ON` this pika lacks, by name."""
    missing: list[str] = []

    def names(function: object) -> tuple[str, ...]:
        code = getattr(function, "__code__", None)
        return tuple(code.co_names) if code is not None else ()

    output = getattr(pika.connection.Connection, "_output_marshaled_frames", None)
    # BaseConnection's own: pika.connection.Connection declares them, abstract.
    if "_adapter_emit_data" not in names(output) or not callable(
        vars(_Base).get("_adapter_emit_data")
    ):
        missing.append("_adapter_emit_data")
    if not callable(vars(_Base).get("_adapter_disconnect_stream")):
        missing.append("_adapter_disconnect_stream")
    if "_transport" not in names(_Base.__init__):
        missing.append("_transport")
    if not callable(getattr(pika.SelectConnection, "_get_write_buffer_size", None)):
        missing.append("_get_write_buffer_size")
    return tuple(missing)


MISSING = missing_hooks()
_warned = False


def _warn_once() -> None:
    global _warned  # noqa: PLW0603 - one warning per process, not per connection
    if MISSING and not _warned:
        _warned = True
        log.warning(
            "publisher.pika_hooks_missing",
            missing=list(MISSING),
            pika_version=pika.__version__,
            verified_with=PIKA_VERSION,
            hint="this pika lacks private hooks the relay uses to write frames in large "
            "chunks: publishing works but is slower. Install pika "
            f"{PIKA_VERSION} (the version pyproject.toml pins) or report the new version.",
        )


class ChunkedConnection(pika.SelectConnection):
    """A ``SelectConnection`` that can hold frames back and write them in large chunks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _warn_once()
        self.holding = False
        self._held: list[bytes] = []
        self._held_bytes = 0
        super().__init__(*args, **kwargs)

    if "_adapter_emit_data" not in MISSING:

        def _adapter_emit_data(self, data: bytes) -> None:
            if not self.holding:
                super()._adapter_emit_data(data)
                return
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes >= WRITE_CHUNK_BYTES:
                self.release_held()
                self.holding = True

    def release_held(self) -> None:
        """Stop holding frames; hand those held to the transport as one write."""
        self.holding = False
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._held_bytes = 0
            super()._adapter_emit_data(data)

    def unwritten(self) -> int:
        """Bytes buffered for the socket; 0 once pika dropped a lost connection's
        transport, and always 0 without the hooks (a flush then never waits)."""
        if "_transport" in MISSING or "_get_write_buffer_size" in MISSING:
            return 0
        if getattr(self, "_transport", None) is None:
            return 0
        return int(self._get_write_buffer_size())

    def abort(self) -> None:
        """Drop the socket now, as pika itself does on a stream error: a broker that
        blocks publishers, or a stalled peer, never answers Connection.Close. Without
        the hook, nothing: the socket goes when the I/O loop is closed."""
        if "_adapter_disconnect_stream" not in MISSING:
            self._adapter_disconnect_stream()
