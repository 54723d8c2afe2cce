"""`outbox-relay status` as text for a person at a terminal."""

from __future__ import annotations

from outbox_relay.store.status import RelayInfo, Status

# A relay that holds no lease and has not heartbeaten for this long (longer than the
# default lease) is cut off from the database or stuck: said next to it.
SILENT_AFTER_S = 10.0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    if not numbers:
        return "-"
    parts: list[str] = []
    start = previous = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == previous + 1:
            previous = n
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if n is not None:
            start = previous = n
    return ",".join(parts)


_SILENT = (
    "holds no lease; it cannot reach the database or its loop is stuck (its log says "
    "which: relay.database_unavailable, store.no_answer), or it is gone"
)


def silent(relay: RelayInfo) -> bool:
    return not relay.partitions and relay.heartbeat_age_s > SILENT_AFTER_S


def render_status(status: Status) -> str:
    lines = [
        f"schema {status.schema!r}",
        f"  pending rows:   {status.pending} ({status.due} due now, {status.retrying} retrying)",
        f"  oldest pending: {_age(status.oldest_pending_s)}",
        f"  dead rows:      {status.dead}"
        + (
            "  (`outbox-relay failed list`; fix the cause, then `outbox-relay failed retry`)"
            if status.dead
            else ""
        ),
        "",
        f"relays ({len(status.relays)}):",
    ]
    for relay in status.relays:
        lines.append(
            f"  {relay.relay_id:<40} heartbeat {_age(relay.heartbeat_age_s):>7} ago  "
            f"partitions {_ranges(relay.partitions)}"
            + ("  SILENT: " + _SILENT if silent(relay) else "")
        )
    if not status.relays:
        lines.append("  none: start `outbox-relay run`")
    unowned = status.unowned_partitions
    lines.append("")
    lines.append(
        f"partitions: {len(status.partitions)}, unowned: {_ranges(unowned)}"
        + ("  (no live relay holds them: their rows are not being published)" if unowned else "")
    )
    busy = [p for p in status.partitions if p.pending]
    for part in busy:
        lines.append(
            f"  partition {part.partition:>4}: {part.pending:>8} pending, oldest "
            f"{_age(part.oldest_pending_s):>7}, owner {part.owner or '-'}"
        )
    return "\n".join(lines)
