"""Partitions of the outbox and how relays share them. Pure.

A row's partition comes from its partition key: the first 28 bits of the key's MD5,
modulo the partition count; rows without a key spread by id. Relays compute it in SQL when
they claim (``outbox_partition`` in ``sql/schema.sql``), so producers
store nothing for it; :func:`partition_for` is the same function in Python, for tools
and tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 1024


@dataclass(frozen=True)
class Leases:
    """What a heartbeat found: the partitions this relay holds and who is alive."""

    owned: tuple[int, ...]
    live: tuple[str, ...]
    partitions: int


def partition_for(key: str | None, *, row_id: int, partitions: int) -> int:
    if key is None:
        return row_id % partitions
    digest = hashlib.md5(key.encode("utf-8"), usedforsecurity=False).hexdigest()
    return int(digest[:7], 16) % partitions


def fair_share(partitions: int, live: Sequence[str], me: str) -> int:
    """How many partitions ``me`` should hold when ``live`` relays share ``partitions``.

    Relays are ranked by id; the first ``partitions % n`` get one more, so the shares
    add up to exactly ``partitions`` and every relay computes the same split.
    """
    relays = sorted(set(live) | {me})
    base, extra = divmod(partitions, len(relays))
    return base + (1 if relays.index(me) < extra else 0)


def surplus(owned: Sequence[int], share: int) -> list[int]:
    """The partitions to hand back when holding more than ``share``: the highest ones."""
    return sorted(owned)[share:] if len(owned) > share else []
