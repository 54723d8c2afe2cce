"""The relay's tunables: named defaults with their units, and :class:`RelaySettings`."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from outbox_relay.misconfiguration import UNHEALTHY_AFTER_S
from outbox_relay.reconnect import RECONNECT_MAX_S
from outbox_relay.relay.backoff import RETRY_BASE_S, RETRY_MAX_S

# Draining a backlog of 512 B rows against raw pika at its best (medians of three
# interleaved rounds, 2026-11-29): 1000 rows 0.722 x, 4000 rows 0.776 x, 8000 rows 0.782 x.
BATCH_SIZE = 4000
# A batch's payloads stop at this many bytes (its first row always goes): what a batch
# holds in memory does not grow with the rows' size. 4000 rows of 512 B take 2 MB.
BATCH_BYTES = 8 * 1024 * 1024
LEASE_TTL_S = 8.0
HEARTBEAT_INTERVAL_S = 2.0
# Stop publishing this long before the lease runs out by the relay's own clock.
LEASE_SAFETY_MARGIN_S = 1.0
POLL_INTERVAL_S = 0.5
# The backstop poll while idle doubles from POLL_INTERVAL_S up to this (see planner).
IDLE_POLL_MAX_S = 5.0
# Rows found by the backstop poll, not announced by a NOTIFY, are logged at most this often.
UNANNOUNCED_LOG_INTERVAL_S = 600.0
MAX_ATTEMPTS = 10
MAX_PUBLISH_ROUNDS = 5
# /healthz fails when the loop has not gone round for this long (and is not merely
# waiting on a blocked broker or an outage).
LIVENESS_LIMIT_S = 60.0


def new_relay_id() -> str:
    """host:pid:random, unique per process start and readable in `outbox-relay status`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = BATCH_SIZE
    batch_bytes: int = BATCH_BYTES
    poll_interval_s: float = POLL_INTERVAL_S
    max_attempts: int = MAX_ATTEMPTS
    retry_base_s: float = RETRY_BASE_S
    retry_max_s: float = RETRY_MAX_S
    reconnect_max_s: float = RECONNECT_MAX_S
    lease_ttl_s: float = LEASE_TTL_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    # /healthz fails once the database or the broker refused the configuration this long.
    unhealthy_after_s: float = UNHEALTHY_AFTER_S
