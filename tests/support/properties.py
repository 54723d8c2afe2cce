"""AMQP basic properties a handler reads from its message, one value each, for tests."""

from __future__ import annotations

from typing import Any

HANDLER_PROPERTIES: dict[str, Any] = {
    "correlation_id": "req-42",
    "reply_to": "replies.shop",
    "priority": 9,
    "type": "order.created",
    "app_id": "shop",
    "content_encoding": "gzip",
    "expiration": "60000",
    "user_id": "guest",
}
