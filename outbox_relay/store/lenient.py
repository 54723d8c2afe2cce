"""Loading claimed rows whatever SQL wrote into them.

A producer with INSERT on the outbox can store values PostgreSQL accepts and Python
cannot load: headers nested thousands of levels deep (json.loads raises RecursionError),
a number of thousands of digits (ValueError), a ``created_at`` of 'infinity' or past
year 9999 (psycopg raises DataError). Any of them would fail every claim that reaches
the row, so no row would be published again. On the relay's work connections such
headers load as :class:`~outbox_relay.message.UnreadableHeaders`, which fails that row
alone, and such timestamps as the nearest one Python has.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format
from psycopg.types.json import set_json_loads

from outbox_relay.amqp_fields import MAX_HEADER_DEPTH
from outbox_relay.message import UnreadableHeaders

_LATEST = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def load_json(data: str | bytes) -> Any:
    """``json.loads``, or UnreadableHeaders saying why the value cannot be loaded."""
    try:
        return json.loads(data)
    except RecursionError:
        return UnreadableHeaders(
            f"nested too deep to be read (more than {MAX_HEADER_DEPTH} levels of tables "
            "and lists are refused)"
        )
    except ValueError as exc:
        return UnreadableHeaders(f"cannot be read: {str(exc)[:200]}")


class _ClampedTimestamptz(Loader):
    """timestamptz, binary: a value past what ``datetime`` holds ('infinity', years
    after 9999 or before 1) loads as the latest or earliest datetime."""

    format = Format.BINARY

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        base = psycopg.adapters.get_loader(oid, self.format)
        assert base is not None  # noqa: S101 - psycopg always has one
        self._load = base(oid, context).load

    def load(self, data: Buffer) -> dt.datetime:
        try:
            return self._load(data)  # type: ignore[no-any-return]
        except psycopg.DataError:
            return _EARLIEST if self._before(bytes(data)) else _LATEST

    @staticmethod
    def _before(data: bytes) -> bool:
        # A big-endian int64 of microseconds: its sign says which end it is past.
        return data[:1] >= b"\x80"


class _ClampedTimestamptzText(_ClampedTimestamptz):
    """The same, in text: '-infinity' and years BC are the earliest."""

    format = Format.TEXT

    @staticmethod
    def _before(data: bytes) -> bool:
        return data.startswith(b"-") or data.endswith(b"BC")


def configure(conn: psycopg.Connection[Any]) -> None:
    """Make ``conn`` load rows as this module describes."""
    set_json_loads(load_json, conn)
    conn.adapters.register_loader("timestamptz", _ClampedTimestamptz)
    conn.adapters.register_loader("timestamptz", _ClampedTimestamptzText)
