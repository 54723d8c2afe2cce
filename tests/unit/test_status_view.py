"""`outbox-relay status` says which relays have gone silent."""

from __future__ import annotations

from outbox_relay.status_view import SILENT_AFTER_S, render_status
from outbox_relay.store.status import PartitionInfo, RelayInfo, Status


def status_with(*relays: RelayInfo) -> Status:
    return Status(
        schema="public",
        pending=0,
        due=0,
        retrying=0,
        dead=0,
        oldest_pending_s=None,
        relays=list(relays),
        partitions=[PartitionInfo(0, relays[0].relay_id, 5.0, 0, None)],
    )


def relay(name: str, age_s: float, partitions: list[int]) -> RelayInfo:
    return RelayInfo(name, "host", 1, age_s, partitions)


class TestSilentRelays:
    def test_a_relay_without_lease_or_heartbeat_for_a_while_is_called_silent(self) -> None:
        text = render_status(status_with(relay("a", 1.0, [0]), relay("b", 45.0, [])))
        line_a, line_b = (line for line in text.splitlines() if line.startswith(("  a", "  b")))
        assert "SILENT" not in line_a
        assert "SILENT" in line_b
        assert "cannot reach the database" in line_b

    def test_a_relay_that_holds_leases_or_heartbeats_is_not(self) -> None:
        text = render_status(status_with(relay("a", SILENT_AFTER_S + 5, [0]), relay("b", 1.0, [])))
        assert "SILENT" not in text
