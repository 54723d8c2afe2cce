"""Message ids: time-ordered UUIDs (RFC 9562 version 7).

Version 7 ids start with the time, so they sort in the order they were made (as text
too). A consumer's inbox is keyed by (consumer, message id): its inserts append to that
index, where a random UUID (version 4) would land anywhere and touch a random leaf page.
The outbox has no index on the id (see sql/schema.sql).
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION_7 = 0x7
_VARIANT_RFC = 0b10


def uuid7(*, unix_ms: int | None = None, random_bytes: bytes | None = None) -> uuid.UUID:
    """A version 7 UUID: 48 bits of Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = os.urandom(10) if random_bytes is None else random_bytes
    if len(rand) != 10:
        raise ValueError("uuid7 needs exactly 10 random bytes")
    rand_int = int.from_bytes(rand, "big")
    rand_a = (rand_int >> 68) & 0xFFF  # 12 bits
    rand_b = rand_int & ((1 << 62) - 1)  # 62 bits
    value = (
        ((ms & ((1 << 48) - 1)) << 80)
        | (_VERSION_7 << 76)
        | (rand_a << 64)
        | (_VARIANT_RFC << 62)
        | rand_b
    )
    return uuid.UUID(int=value)
