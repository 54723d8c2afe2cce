"""A watchdog for hosts without probes: systemd's, or an exit when the loop is stuck.

Under systemd (``Type=notify`` and ``WatchdogSec=`` in deploy/outbox-relay.service) the
relay says READY=1 when it starts, WATCHDOG=1 every half of ``WatchdogSec`` while it is
alive (the loop went round within LIVENESS_LIMIT_S, or it is retrying through an
outage: what ``/healthz`` reports), and STOPPING=1 once asked to stop. A relay whose
loop is stuck stops notifying, and systemd kills and restarts it ``WatchdogSec`` later.
The protocol is a datagram to the unix socket named by ``$NOTIFY_SOCKET``
(sd_notify(3)); without that variable nothing is sent.

Where nothing watches (compose, a plain container), ``exit_when_stuck`` makes the
process exit with code 1 as soon as it is not alive, so its restart policy starts it
again.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping

import structlog

Probe = Callable[[], tuple[bool, str]]

# How often the liveness is looked at when systemd asks for no watchdog.
CHECK_INTERVAL_S = 5.0
EXIT_STUCK = 1

log = structlog.get_logger("outbox_relay.watchdog")


class SystemdNotifier:
    """sd_notify(3) without libsystemd; does nothing outside a systemd service."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self._address = address or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> None:
        """Send ``KEY=value`` lines; a failure is logged, never raised (systemd may be
        restarting; the watchdog then restarts the relay if it must)."""
        if self._address is None:
            return
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("watchdog.notify_failed", states=list(states), error=str(exc))


class Watchdog:
    """A daemon thread that notifies systemd while ``liveness`` holds, and says
    STOPPING=1 once ``stopping`` does; with ``exit_when_stuck``, exits the process
    (code 1) when ``liveness`` fails."""

    def __init__(
        self,
        *,
        notifier: SystemdNotifier,
        liveness: Probe,
        stopping: Callable[[], bool],
        exit_when_stuck: bool = False,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self._notifier = notifier
        self._liveness = liveness
        self._stopping = stopping
        self._exit_when_stuck = exit_when_stuck
        self._exit = exit_process
        watchdog_s = notifier.watchdog_s
        self.interval_s = watchdog_s / 2 if watchdog_s else CHECK_INTERVAL_S
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._said_stopping = False
        self._stuck_logged = False

    def start(self) -> Watchdog:
        self._notifier.notify("READY=1", "STATUS=relaying")
        if self._notifier.watchdog_s is None and not self._exit_when_stuck:
            return self  # nothing to watch for
        self._thread = threading.Thread(target=self._run, name="outbox-relay-watchdog", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(2)
        if not self._said_stopping:
            self._notifier.notify("STOPPING=1")
            self._said_stopping = True

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.check()

    def check(self) -> None:
        """One look: notify, say stopping, or act on a stuck loop."""
        if self._stopping() and not self._said_stopping:
            self._notifier.notify("STOPPING=1")
            self._said_stopping = True
        alive, detail = self._liveness()
        if alive:
            self._stuck_logged = False
            if self._notifier.watchdog_s is not None:
                self._notifier.notify("WATCHDOG=1")
            return
        if self._exit_when_stuck:
            log.error("relay.stuck", detail=detail, action="exiting with code 1 to be restarted")
            self._exit(EXIT_STUCK)
            return
        if not self._stuck_logged:
            self._stuck_logged = True
            log.error(
                "relay.stuck",
                detail=detail,
                action="no longer notifying the systemd watchdog, which restarts the relay",
            )
            self._notifier.notify(f"STATUS=stuck: {detail}")
