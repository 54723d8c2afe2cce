"""Noticing a dead peer: TCP keepalives and TCP_USER_TIMEOUT on every connection.

A database or broker host that vanishes (power cut, a lost route, a firewall or NAT that
forgets the connection) sends neither FIN nor RST. Left to the kernel's defaults, an idle
connection never notices, and one waiting for an answer retransmits for about 15 minutes
(Linux ``tcp_retries2``). With a dead-peer timeout of T seconds:

- keepalive probes start after T/2 s of silence, KEEPALIVE_PROBES of them spread over the
  rest of T, so an idle connection to a vanished peer ends after about T;
- TCP_USER_TIMEOUT ends a connection whose sent data stays unacknowledged for T, or
  that a peer which stopped reading holds at a zero window for T (Linux 5.11 and later).

One figure feeds both pika's ``tcp_options`` and libpq's keepalive parameters. 0 leaves
the operating system's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

DEAD_PEER_TIMEOUT_S = 30.0
KEEPALIVE_PROBES = 3


@dataclass(frozen=True)
class DeadPeerTimings:
    idle_s: int
    interval_s: int
    probes: int
    user_timeout_ms: int

    @classmethod
    def for_timeout(cls, timeout_s: float) -> DeadPeerTimings | None:
        """The timings for a dead-peer timeout; None for 0 (the OS defaults)."""
        if timeout_s <= 0:
            return None
        idle_s = max(1, int(timeout_s / 2))
        interval_s = max(1, int((timeout_s - idle_s) / KEEPALIVE_PROBES))
        return cls(idle_s, interval_s, KEEPALIVE_PROBES, round(timeout_s * 1000))

    def pika_tcp_options(self) -> dict[str, int]:
        """For pika's ``ConnectionParameters.tcp_options`` (names pika knows on Linux)."""
        return {
            "TCP_KEEPIDLE": self.idle_s,
            "TCP_KEEPINTVL": self.interval_s,
            "TCP_KEEPCNT": self.probes,
            "TCP_USER_TIMEOUT": self.user_timeout_ms,
        }

    def libpq_parameters(self) -> dict[str, int]:
        """libpq connection parameters (passed through psycopg's conninfo)."""
        return {
            "keepalives": 1,
            "keepalives_idle": self.idle_s,
            "keepalives_interval": self.interval_s,
            "keepalives_count": self.probes,
            "tcp_user_timeout": self.user_timeout_ms,
        }


DEAD_PEER_TIMEOUT_RULE = "must be 0 (the operating system's defaults) or at least 1 second"


def usable_dead_peer_timeout(timeout_s: float) -> bool:
    """Keepalive timings count whole seconds, the shortest being one."""
    return timeout_s == 0 or timeout_s >= 1
