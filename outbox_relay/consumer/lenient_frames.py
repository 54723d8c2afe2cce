"""Content headers pika cannot decode, kept as raw bytes instead of taking the connection down.

pika decodes every frame inside its I/O loop. When the property list of a content header
holds a value Python cannot represent (a header timestamp past year 9999, a table nested
deeper than the recursion limit, a NaN double, an unknown field type letter), the decode
raises there; pika aborts the connection, the broker requeues the message and redelivers
it to the next connection, for ever, while nothing else is consumed.

:func:`install` replaces, on one connection only, the method that turns buffered bytes
into frames. A content header whose properties fail to decode becomes a normal header
frame whose properties are an :class:`UndecodedProperties`: the properties that could be
read without the header table (message id, content type, timestamp...), no headers, and
an :class:`Undecodable` carrying the raw property bytes and the error. The delivery then
flows through pika like any other, and the consumer parks it with the reason. Every other
frame, and every error that is not about one header's properties (a broken frame end, an
unknown frame type), is pika's business as before.

pika also decodes AMQP floats and doubles with ``long(...)``: 0.5 arrives as 0, and a
retried or parked copy would carry the truncated value. :func:`install_field_codec`
(which :func:`install` calls) makes pika decode them as floats and 64-bit integers as
plain ``int``, and encode floats as doubles again (:mod:`outbox_relay.pika_doubles`), so
a republished copy carries the values received, bit for bit. A NaN or infinite float is
still undecodable, as before: it is parked with the reason.

This is the one module that touches pika's private frame handling. It was written
against pika ``PIKA_VERSION``; tests/unit/test_lenient_frames.py fails on any other
version until someone has checked the internals listed in :data:`RELIES_ON` again.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.data
import pika.exceptions
import structlog
from pika import frame, spec

from outbox_relay import pika_doubles

PIKA_VERSION = "1.4.4"
# What this module reads or replaces in pika, checked by the version test.
RELIES_ON = (
    "pika.connection.Connection._read_frame() returns frame.decode_frame(self._frame_buffer)",
    "pika.connection.Connection._on_data_available() calls self._read_frame()",
    "pika.frame.decode_frame(data_in) -> (bytes consumed, frame or None)",
    "pika.frame.Header(channel_number, body_size, props)",
    "pika.spec.BasicProperties.decode(encoded, offset=0); INDEX == 60",
    "pika.BlockingConnection._impl is the pika.connection.Connection",
    "pika.connection.Connection.params.frame_max is the negotiated frame_max once open",
    "pika.data.decode_value(encoded, offset) -> (value, offset), the type octet at offset",
    "pika.data.decode_table and arrays call decode_value through the module global",
    "pika.data.decode_value decodes 'f' and 'd' with long(), 'l' and 'L' as pika.compat.long",
)

# Everything pika's table decoder was seen to raise on bytes the broker let through, or
# could raise on bytes a peer may send: struct.error (truncated), ValueError (year out of
# range, int(nan)), OverflowError and OSError (timestamps past what time_t holds),
# RecursionError (nesting), ArithmeticError (decimal), LookupError (an unknown class id),
# ProtocolSyntaxError (an unknown field type letter).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    struct.error,
    ValueError,
    OverflowError,
    OSError,
    RecursionError,
    ArithmeticError,
    LookupError,
    TypeError,
    pika.exceptions.ProtocolSyntaxError,
)

_FRAME_PREFIX = struct.Struct(">BHL")  # type, channel, size
_HEADER_PREFIX = struct.Struct(">HHQ")  # class id, weight, body size
_HEADER_PREFIX_SIZE = 12
_FLAGS = struct.Struct(">H")
_TABLE_SIZE = struct.Struct(">I")
FRAME_OVERHEAD = spec.FRAME_HEADER_SIZE + spec.FRAME_END_SIZE + _HEADER_PREFIX_SIZE

log = structlog.get_logger("outbox_relay.consumer")

FrameResult = tuple[int, "frame.Frame | frame.ProtocolHeader | None"]


@dataclass(frozen=True)
class Undecodable:
    """A content header's properties that pika could not decode."""

    raw: bytes  # the property flags and list, as they follow class id, weight and body size
    error: str  # the exception pika raised, "Type: message"
    salvaged: bool  # the other properties were read; only the header table is lost

    def reason(self) -> str:
        kept = (
            "the other properties were kept"
            if self.salvaged
            else "no property could be read (the frame is malformed)"
        )
        return (
            f"pika cannot decode the message's properties ({self.error}): a header holds a "
            "value Python cannot represent (e.g. a timestamp past year 9999, a table or "
            f"array nested too deep); the header table was dropped and {kept}. Fix the "
            "publisher; the raw properties travel with the parked message"
        )


class UndecodedProperties(spec.BasicProperties):
    """Basic properties without the header table that could not be decoded."""

    undecodable: Undecodable

    @classmethod
    def from_raw(cls, raw: bytes, error: BaseException) -> UndecodedProperties:
        properties = cls()
        salvaged = False
        without_table = _without_header_table(raw)
        if without_table is not None:
            try:
                properties.decode(without_table)  # type: ignore[no-untyped-call]
                salvaged = True
            except DECODE_ERRORS:
                properties = cls()
        properties.undecodable = Undecodable(
            raw=raw, error=f"{type(error).__name__}: {error}", salvaged=salvaged
        )
        return properties


def undecodable(properties: object) -> Undecodable | None:
    """What could not be decoded in ``properties``; None when pika decoded them all."""
    if isinstance(properties, UndecodedProperties):
        return properties.undecodable
    return None


def decode_frame(data_in: bytes) -> FrameResult:
    """pika's :func:`pika.frame.decode_frame`, except that a content header whose
    properties fail to decode yields a header frame with :class:`UndecodedProperties`."""
    try:
        return frame.decode_frame(data_in)
    except DECODE_ERRORS as exc:
        lenient = _lenient_header(data_in, exc)
        if lenient is None:
            raise
        return lenient


_FLOAT = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")
_LONG = struct.Struct(">q")
_pika_decode_value: Callable[[bytes, int], tuple[Any, int]] = pika.data.decode_value


def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    """pika's ``decode_value``, with floats and doubles as ``float`` and long integers as
    ``int``."""
    kind = encoded[offset : offset + 1]
    if kind == b"d":
        value: Any = _DOUBLE.unpack_from(encoded, offset + 1)[0]
        end = offset + 1 + _DOUBLE.size
    elif kind == b"f":
        value = _FLOAT.unpack_from(encoded, offset + 1)[0]
        end = offset + 1 + _FLOAT.size
    elif kind in (b"l", b"L"):  # RabbitMQ writes 'l', py-amqp 'L': both signed 64-bit
        return _LONG.unpack_from(encoded, offset + 1)[0], offset + 1 + _LONG.size
    else:
        return _pika_decode_value(encoded, offset)
    if not math.isfinite(value):
        raise ValueError(f"cannot take the float {value} in a header (NaN or infinity)")
    return value, end


def install_field_codec() -> None:
    """Decode floats, doubles and long integers as :func:`decode_value` does, and encode
    floats as doubles, in this process; idempotent."""
    pika.data.decode_value = decode_value
    pika_doubles.install()


def install(connection: pika.BlockingConnection) -> bool:
    """Decode this connection's content headers with :func:`decode_frame`, and header
    values with :func:`install_field_codec`; call before consuming. False (with a warning
    logged) when this pika lacks what the fence needs: the connection then decodes as
    pika does."""
    install_field_codec()
    impl: Any = connection._impl
    if not callable(getattr(impl, "_read_frame", None)) or not hasattr(impl, "_frame_buffer"):
        log.warning(
            "consumer.lenient_decoding_unavailable",
            pika_version=pika.__version__,
            written_for=PIKA_VERSION,
            effect="a header pika cannot decode will drop the connection",
        )
        return False
    read: Callable[[], FrameResult] = lambda: decode_frame(impl._frame_buffer)  # noqa: E731
    impl._read_frame = read
    return True


def negotiated_frame_max(connection: pika.BlockingConnection) -> int:
    """The largest frame the broker accepts on this (open) connection, in bytes."""
    return int(connection._impl.params.frame_max)


def _lenient_header(data_in: bytes, error: BaseException) -> FrameResult | None:
    """The header frame at the start of ``data_in`` with undecoded properties; None when
    the frame is not a complete, well-framed content header of class basic."""
    try:
        frame_type, channel_number, size = _FRAME_PREFIX.unpack_from(data_in, 0)
        frame_end = spec.FRAME_HEADER_SIZE + size + spec.FRAME_END_SIZE
        if (
            frame_type != spec.FRAME_HEADER
            or frame_end > len(data_in)
            or data_in[frame_end - 1] != spec.FRAME_END
        ):
            return None
        payload = data_in[spec.FRAME_HEADER_SIZE : frame_end - 1]
        class_id, _weight, body_size = _HEADER_PREFIX.unpack_from(payload, 0)
    except struct.error:
        return None
    if class_id != spec.BasicProperties.INDEX:
        return None
    properties = UndecodedProperties.from_raw(bytes(payload[_HEADER_PREFIX_SIZE:]), error)
    return frame_end, frame.Header(channel_number, body_size, properties)


def _without_header_table(raw: bytes) -> bytes | None:
    """``raw`` with the header table and its flag taken out; None when ``raw`` has no
    table or is too short to find it."""
    try:
        (flags,) = _FLAGS.unpack_from(raw, 0)
        if not flags & spec.BasicProperties.FLAG_HEADERS:
            return None
        offset = _FLAGS.size
        extra_flags = flags
        while extra_flags & 1:  # more flag words follow
            (extra_flags,) = _FLAGS.unpack_from(raw, offset)
            offset += _FLAGS.size
        for flag in (
            spec.BasicProperties.FLAG_CONTENT_TYPE,
            spec.BasicProperties.FLAG_CONTENT_ENCODING,
        ):
            if flags & flag:
                offset += 1 + raw[offset]  # a short string: length octet, then the octets
        (table_size,) = _TABLE_SIZE.unpack_from(raw, offset)
    except (struct.error, IndexError):
        return None
    end = offset + _TABLE_SIZE.size + table_size
    if end > len(raw):
        return None
    cleared = _FLAGS.pack(flags & ~spec.BasicProperties.FLAG_HEADERS)
    return cleared + raw[_FLAGS.size : offset] + raw[end:]
