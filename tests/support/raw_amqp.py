"""AMQP 0-9-1 field values and content-header properties encoded by hand, for sending
bytes that pika itself would never produce (and may refuse to decode).

The encoder here is independent of pika's: every value is packed with :mod:`struct`
straight from the spec (section 4.2.5, with RabbitMQ's field type letters). Publishing
goes through a pika connection whose properties object hands these bytes over as they
are, so the broker receives exactly what a non-pika client could send.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

FLAG_CONTENT_TYPE = 1 << 15
FLAG_HEADERS = 1 << 13
FLAG_DELIVERY_MODE = 1 << 12
FLAG_MESSAGE_ID = 1 << 7
FLAG_TIMESTAMP = 1 << 6


def short(text: bytes) -> bytes:
    """A short string: one length octet, then the octets (any bytes, valid UTF-8 or not)."""
    assert len(text) <= 255
    return struct.pack("B", len(text)) + text


def long_string(data: bytes) -> bytes:
    return b"S" + struct.pack(">I", len(data)) + data


def byte_array(data: bytes) -> bytes:
    return b"x" + struct.pack(">I", len(data)) + data


def timestamp(seconds: int) -> bytes:
    return b"T" + struct.pack(">Q", seconds)


def decimal(scale: int, raw: int) -> bytes:
    return b"D" + struct.pack(">Bi", scale, raw)


def double(value: float) -> bytes:
    return b"d" + struct.pack(">d", value)


def single(value: float) -> bytes:
    return b"f" + struct.pack(">f", value)


def integer(kind: bytes, value: int) -> bytes:
    """``kind`` is the field type letter; its struct format follows RabbitMQ's table."""
    formats = {b"b": ">b", b"B": ">B", b"s": ">h", b"U": ">h", b"u": ">H", b"I": ">i"}
    formats |= {b"i": ">I", b"l": ">q", b"L": ">q", b"t": ">B"}
    return kind + struct.pack(formats[kind], value)


def void() -> bytes:
    return b"V"


def table_body(*entries: tuple[bytes, bytes]) -> bytes:
    """A field table (length, then name/value pairs) from names and encoded values."""
    payload = b"".join(short(name) + value for name, value in entries)
    return struct.pack(">I", len(payload)) + payload


def table(*entries: tuple[bytes, bytes]) -> bytes:
    """A field table as a value (type ``F``)."""
    return b"F" + table_body(*entries)


def array(*values: bytes) -> bytes:
    payload = b"".join(values)
    return b"A" + struct.pack(">I", len(payload)) + payload


def nested_tables(depth: int) -> bytes:
    """A table inside a table, ``depth`` levels down."""
    value = table()
    for _ in range(depth - 1):
        value = table((b"n", value))
    return value


def nested_arrays(depth: int) -> bytes:
    value = array()
    for _ in range(depth - 1):
        value = array(value)
    return value


@dataclass(frozen=True)
class RawMessage:
    """Content-header properties as raw pieces; None leaves a property out."""

    message_id: bytes | None = None
    content_type: bytes | None = b"application/json"
    headers: bytes | None = None  # an encoded table (length prefix included)
    timestamp: int | None = None
    delivery_mode: int = 2

    def properties_payload(self) -> bytes:
        """The property flags and list, as they follow class id, weight and body size."""
        flags, pieces = 0, []
        if self.content_type is not None:
            flags |= FLAG_CONTENT_TYPE
            pieces.append(short(self.content_type))
        if self.headers is not None:
            flags |= FLAG_HEADERS
            pieces.append(self.headers)
        flags |= FLAG_DELIVERY_MODE
        pieces.append(struct.pack("B", self.delivery_mode))
        if self.message_id is not None:
            flags |= FLAG_MESSAGE_ID
            pieces.append(short(self.message_id))
        if self.timestamp is not None:
            flags |= FLAG_TIMESTAMP
            pieces.append(struct.pack(">Q", self.timestamp))
        return struct.pack(">H", flags) + b"".join(pieces)


class _RawProperties(pika.BasicProperties):
    """Hands pika's frame marshaller the hand-made bytes instead of encoding anything."""

    def __init__(self, payload: bytes) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._payload = payload

    def encode(self) -> list[bytes]:
        return [self._payload]


def publish_raw(
    channel: BlockingChannel, exchange: str, routing_key: str, body: bytes, message: RawMessage
) -> None:
    channel.basic_publish(
        exchange, routing_key, body, properties=_RawProperties(message.properties_payload())
    )
