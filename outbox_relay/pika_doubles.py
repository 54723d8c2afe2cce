"""Floats in header tables, encoded as AMQP doubles: what pika cannot do on its own.

pika 1.4 encodes str, bytes, bool, int, Decimal, datetime, dicts, lists and None in a
field table, and raises ``UnsupportedAMQPFieldException`` for a float. :func:`install`
wraps ``pika.data.encode_value`` (process-wide, once) so that a float is written as a
double (type ``d``, 8 bytes, big-endian IEEE 754, as RabbitMQ and the other clients
write them) and every other value as pika writes it. pika's table and array encoders
look ``encode_value`` up in their module at each call, so nested floats are covered.

The decoding side (pika reads ``f`` and ``d`` with ``long(...)``, truncating 0.5 to 0)
is fenced in :mod:`outbox_relay.consumer.lenient_frames`.

This is the one module that changes pika's encoding. It was written against pika
``PIKA_VERSION``; tests/unit/test_pika_doubles.py fails on any other version, and when
pika starts encoding floats itself, until someone has checked :data:`RELIES_ON` again.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pika.data

PIKA_VERSION = "1.4.4"
RELIES_ON = (
    "pika.data.encode_value(pieces, value) -> bytes appended to pieces",
    "pika.data.encode_table and encode_value call encode_value through the module global",
    "pika.data.encode_value raises UnsupportedAMQPFieldException for a float",
)

_DOUBLE = struct.Struct(">cd")
_pika_encode_value: Callable[[list[bytes], Any], int] = pika.data.encode_value


def encode_value(pieces: list[bytes], value: Any) -> int:
    """pika's ``encode_value``, with floats as doubles."""
    if isinstance(value, float):
        pieces.append(_DOUBLE.pack(b"d", value))
        return _DOUBLE.size
    return _pika_encode_value(pieces, value)


def install() -> None:
    """Make pika encode floats as doubles in this process; idempotent."""
    pika.data.encode_value = encode_value
