"""The partitions this relay holds, and until when it may publish for them.

The store's heartbeat renews the leases (on a connection no claim uses, so it can run
while a claim is open and never commits one); :class:`LeaseHold` keeps its answer. A
claim only touches partitions held, and none is made past :attr:`LeaseHold.deadline`:
the lease's time to live, less a safety margin, from when the heartbeat started, by
this relay's own clock. The store checks the lease again in the claim's transaction.
"""

from __future__ import annotations

import structlog

from outbox_relay.relay.partitions import Leases
from outbox_relay.relay.settings import LEASE_SAFETY_MARGIN_S

log = structlog.get_logger("outbox_relay.relay")


class LeaseHold:
    """What the last heartbeat left this relay holding. Pure but for a log line."""

    def __init__(self, *, lease_ttl_s: float) -> None:
        self._lease_ttl_s = lease_ttl_s
        self._leases: Leases | None = None
        self.deadline = 0.0  # monotonic; past it, this relay may not publish

    @property
    def owned(self) -> tuple[int, ...]:
        return self._leases.owned if self._leases is not None else ()

    def may_claim(self, now: float) -> bool:
        return bool(self.owned) and now < self.deadline

    def renewed(self, leases: Leases, *, started: float) -> bool:
        """A heartbeat started at ``started`` returned ``leases``; True when this relay
        now holds a partition it did not."""
        held = set(self.owned)
        gained = bool(set(leases.owned) - held)
        if self._leases is None or leases.owned != self._leases.owned:
            log.info(
                "relay.partitions_changed",
                owned=len(leases.owned),
                partitions=leases.partitions,
                live_relays=len(leases.live),
            )
        self._leases = leases
        self.deadline = started + self._lease_ttl_s - LEASE_SAFETY_MARGIN_S
        return gained
