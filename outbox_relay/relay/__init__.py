"""The relay daemon's core, one module per box of the design (DESIGN.md, "The relay loop").

- :mod:`.loop`: :class:`Relay`, the loop and its lifecycle;
- :mod:`.planner`: when to claim and how long to sleep (pure);
- :mod:`.pipeline`: claim ahead, two batches out, per-key hold-back;
- :mod:`.settling`: a claim's outcomes into the table, the failures logged;
- :mod:`.leases`: the partitions held and until when;
- :mod:`.ports`: the store and publisher doors, and the observer;
- :mod:`.confirms`: a sent batch's confirms, returns and channel closes (pure);
- pure decisions: :mod:`.ordering`, :mod:`.outcome`, :mod:`.isolation`, :mod:`.backoff`,
  :mod:`.partitions`, :mod:`.wakeup`; tunables in :mod:`.settings`.

Importing a module of the package (the producer reads :mod:`.wakeup`, the store
:mod:`.outcome`) does not import the loop: the names below are loaded when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outbox_relay.relay.loop import Relay as Relay
    from outbox_relay.relay.ports import (
        BatchResult as BatchResult,
    )
    from outbox_relay.relay.ports import (
        Claim as Claim,
    )
    from outbox_relay.relay.ports import (
        NullObserver as NullObserver,
    )
    from outbox_relay.relay.ports import (
        Publisher as Publisher,
    )
    from outbox_relay.relay.ports import (
        RelayObserver as RelayObserver,
    )
    from outbox_relay.relay.ports import (
        Sending as Sending,
    )
    from outbox_relay.relay.ports import (
        Store as Store,
    )
    from outbox_relay.relay.settings import (
        BATCH_BYTES as BATCH_BYTES,
    )
    from outbox_relay.relay.settings import (
        BATCH_SIZE as BATCH_SIZE,
    )
    from outbox_relay.relay.settings import (
        HEARTBEAT_INTERVAL_S as HEARTBEAT_INTERVAL_S,
    )
    from outbox_relay.relay.settings import (
        IDLE_POLL_MAX_S as IDLE_POLL_MAX_S,
    )
    from outbox_relay.relay.settings import (
        LEASE_SAFETY_MARGIN_S as LEASE_SAFETY_MARGIN_S,
    )
    from outbox_relay.relay.settings import (
        LEASE_TTL_S as LEASE_TTL_S,
    )
    from outbox_relay.relay.settings import (
        LIVENESS_LIMIT_S as LIVENESS_LIMIT_S,
    )
    from outbox_relay.relay.settings import (
        MAX_ATTEMPTS as MAX_ATTEMPTS,
    )
    from outbox_relay.relay.settings import (
        MAX_PUBLISH_ROUNDS as MAX_PUBLISH_ROUNDS,
    )
    from outbox_relay.relay.settings import (
        POLL_INTERVAL_S as POLL_INTERVAL_S,
    )
    from outbox_relay.relay.settings import (
        UNANNOUNCED_LOG_INTERVAL_S as UNANNOUNCED_LOG_INTERVAL_S,
    )
    from outbox_relay.relay.settings import (
        RelaySettings as RelaySettings,
    )
    from outbox_relay.relay.settings import (
        new_relay_id as new_relay_id,
    )

_WHERE = {
    "Relay": "outbox_relay.relay.loop",
    "BatchResult": "outbox_relay.relay.ports",
    "Claim": "outbox_relay.relay.ports",
    "NullObserver": "outbox_relay.relay.ports",
    "Publisher": "outbox_relay.relay.ports",
    "RelayObserver": "outbox_relay.relay.ports",
    "Sending": "outbox_relay.relay.ports",
    "Store": "outbox_relay.relay.ports",
    "BATCH_BYTES": "outbox_relay.relay.settings",
    "BATCH_SIZE": "outbox_relay.relay.settings",
    "HEARTBEAT_INTERVAL_S": "outbox_relay.relay.settings",
    "IDLE_POLL_MAX_S": "outbox_relay.relay.settings",
    "LEASE_SAFETY_MARGIN_S": "outbox_relay.relay.settings",
    "LEASE_TTL_S": "outbox_relay.relay.settings",
    "LIVENESS_LIMIT_S": "outbox_relay.relay.settings",
    "MAX_ATTEMPTS": "outbox_relay.relay.settings",
    "MAX_PUBLISH_ROUNDS": "outbox_relay.relay.settings",
    "POLL_INTERVAL_S": "outbox_relay.relay.settings",
    "UNANNOUNCED_LOG_INTERVAL_S": "outbox_relay.relay.settings",
    "RelaySettings": "outbox_relay.relay.settings",
    "new_relay_id": "outbox_relay.relay.settings",
}

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
