"""The relay daemon's core, one module per box of the design (DESIGN.md, "The relay loop").

- :mod:`.loop`: :class:`Relay`, the loop and its lifecycle;
- :mod:`.planner`: when to claim and how long to sleep (pure);
- :mod:`.pipeline`: claim ahead, two batches out, per-key hold-back, settle;
- :mod:`.leases`: the partitions held and until when;
- :mod:`.ports`: the store and publisher doors, and the observer;
- :mod:`.confirms`: a sent batch's confirms, returns and channel closes (pure);
- pure decisions: :mod:`.ordering`, :mod:`.outcome`, :mod:`.isolation`, :mod:`.backoff`,
  :mod:`.partitions`, :mod:`.wakeup`; tunables in :mod:`.settings`.
"""

from __future__ import annotations

from outbox_relay.relay.loop import Relay
from outbox_relay.relay.ports import (
    BatchResult,
    Claim,
    NullObserver,
    Publisher,
    RelayObserver,
    Sending,
    Store,
)
from outbox_relay.relay.settings import (
    BATCH_BYTES,
    BATCH_SIZE,
    HEARTBEAT_INTERVAL_S,
    IDLE_POLL_MAX_S,
    LEASE_SAFETY_MARGIN_S,
    LEASE_TTL_S,
    LIVENESS_LIMIT_S,
    MAX_ATTEMPTS,
    MAX_PUBLISH_ROUNDS,
    POLL_INTERVAL_S,
    UNANNOUNCED_LOG_INTERVAL_S,
    RelaySettings,
    new_relay_id,
)

__all__ = [
    "BATCH_BYTES",
    "BATCH_SIZE",
    "HEARTBEAT_INTERVAL_S",
    "IDLE_POLL_MAX_S",
    "LEASE_SAFETY_MARGIN_S",
    "LEASE_TTL_S",
    "LIVENESS_LIMIT_S",
    "MAX_ATTEMPTS",
    "MAX_PUBLISH_ROUNDS",
    "POLL_INTERVAL_S",
    "UNANNOUNCED_LOG_INTERVAL_S",
    "BatchResult",
    "Claim",
    "NullObserver",
    "Publisher",
    "Relay",
    "RelayObserver",
    "RelaySettings",
    "Sending",
    "Store",
    "new_relay_id",
]
