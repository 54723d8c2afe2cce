"""Per-key order within a batch: which rows wait behind a failed row of the same key."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from outbox_relay.message import OutboxRow


def held_back(rows: Iterable[OutboxRow], failed_ids: Collection[int]) -> set[int]:
    """Ids of rows that come after a failed row with the same partition key.

    Rows without a partition key are never held back; a failure holds back only its key.
    """
    rows = list(rows)
    failed = set(failed_ids)
    first_failure: dict[str, int] = {}
    for row in rows:
        if row.id in failed and row.partition_key is not None:
            known = first_failure.get(row.partition_key)
            if known is None or row.id < known:
                first_failure[row.partition_key] = row.id
    return {
        row.id
        for row in rows
        if row.partition_key is not None
        and row.id not in failed
        and row.id > first_failure.get(row.partition_key, row.id)
    }


def resend_order(
    rows: Iterable[OutboxRow], unsent: Collection[int], held: Collection[int]
) -> list[OutboxRow]:
    """The unsent rows that may go out again, in id order."""
    unsent_set, held_set = set(unsent), set(held)
    return sorted(
        (r for r in rows if r.id in unsent_set and r.id not in held_set), key=lambda r: r.id
    )


def waiting_behind(rows: Iterable[OutboxRow], unconfirmed: Iterable[OutboxRow]) -> set[int]:
    """Ids of rows that must wait for an older row of their key in ``unconfirmed``.

    ``unconfirmed`` are the rows of the previous batch that the broker did not confirm
    (refused, held back or never sent): they stay in the table, so no later row of their
    key may go out before them. A row older than all of them may. Rows without a
    partition key never wait.
    """
    oldest: dict[str, int] = {}
    for row in unconfirmed:
        if row.partition_key is not None:
            oldest[row.partition_key] = min(row.id, oldest.get(row.partition_key, row.id))
    return {
        row.id
        for row in rows
        if row.partition_key is not None and oldest.get(row.partition_key, row.id) < row.id
    }
