"""Outbox rows as the relay holds them, for unit tests."""

from __future__ import annotations

import datetime as dt
import uuid

from outbox_relay.message import OutboxRow


def sized_row(row_id: int, size: int) -> OutboxRow:
    """An unkeyed row whose payload is ``size`` bytes."""
    return OutboxRow(
        id=row_id,
        message_id=str(uuid.uuid4()),
        exchange="ex",
        routing_key="rk",
        payload=b"x" * size,
        content_type="application/octet-stream",
        headers={},
        partition_key=None,
        created_at=dt.datetime.now(tz=dt.timezone.utc),
    )
