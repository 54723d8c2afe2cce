"""The watchdog: systemd is told READY, WATCHDOG while alive and STOPPING; a stuck loop
stops the notifications, or exits the process when asked to."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from outbox_relay.watchdog import CHECK_INTERVAL_S, EXIT_STUCK, SystemdNotifier, Watchdog


class RecordingNotifier(SystemdNotifier):
    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self.sent: list[str] = []

    def notify(self, *states: str) -> None:
        self.sent.extend(states)


class Probe:
    def __init__(self) -> None:
        self.alive = True
        self.stopping = False

    def liveness(self) -> tuple[bool, str]:
        return self.alive, "last iteration 1.0s ago" if self.alive else "no iteration for 61s"


def watchdog_for(
    probe: Probe, *, usec: str | None = "30000000", exit_when_stuck: bool = False
) -> tuple[Watchdog, RecordingNotifier, list[int]]:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    notifier = RecordingNotifier(environ)
    exits: list[int] = []
    watchdog = Watchdog(
        notifier=notifier,
        liveness=probe.liveness,
        stopping=lambda: probe.stopping,
        exit_when_stuck=exit_when_stuck,
        exit_process=exits.append,
    )
    return watchdog, notifier, exits


class TestSystemdNotifier:
    def test_the_watchdog_interval_comes_from_watchdog_usec(self) -> None:
        assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_s == 30.0

    @pytest.mark.parametrize("usec", ["", "0", "x"])
    def test_no_watchdog_without_a_usable_interval(self, usec: str) -> None:
        assert SystemdNotifier({"WATCHDOG_USEC": usec}).watchdog_s is None

    def test_a_watchdog_meant_for_another_process_is_not_ours(self) -> None:
        environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        assert SystemdNotifier(environ).watchdog_s is None

    def test_outside_systemd_nothing_is_sent(self) -> None:
        notifier = SystemdNotifier({})
        assert not notifier.enabled
        notifier.notify("READY=1")  # no socket to send to: nothing happens

    def test_the_datagram_reaches_the_notify_socket(self, tmp_path: Path) -> None:
        path = tmp_path / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(str(path))
            SystemdNotifier({"NOTIFY_SOCKET": str(path)}).notify("READY=1", "STATUS=relaying")
            assert server.recv(1024) == b"READY=1\nSTATUS=relaying"

    def test_an_unreachable_socket_is_logged_not_raised(self, tmp_path: Path) -> None:
        with capture_logs() as logs:
            SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("WATCHDOG=1")
        assert [e["event"] for e in logs] == ["watchdog.notify_failed"]


class TestWatchdog:
    def test_ready_at_start_then_watchdog_every_half_interval_while_alive(self) -> None:
        probe = Probe()
        watchdog, notifier, _ = watchdog_for(probe)
        assert watchdog.interval_s == 15.0
        watchdog.check()
        watchdog.check()
        assert notifier.sent == ["WATCHDOG=1", "WATCHDOG=1"]

    def test_a_stuck_loop_stops_the_notifications_and_says_so_once(self) -> None:
        probe = Probe()
        watchdog, notifier, exits = watchdog_for(probe)
        probe.alive = False
        with capture_logs() as logs:
            watchdog.check()
            watchdog.check()
        assert "WATCHDOG=1" not in notifier.sent
        assert notifier.sent == ["STATUS=stuck: no iteration for 61s"]
        assert [e["event"] for e in logs] == ["relay.stuck"]
        assert "systemd" in logs[0]["action"]
        assert exits == []

    def test_notifications_resume_once_the_loop_goes_round_again(self) -> None:
        probe = Probe()
        watchdog, notifier, _ = watchdog_for(probe)
        probe.alive = False
        watchdog.check()
        probe.alive = True
        watchdog.check()
        assert notifier.sent[-1] == "WATCHDOG=1"

    def test_stopping_is_said_once(self) -> None:
        probe = Probe()
        watchdog, notifier, _ = watchdog_for(probe)
        probe.stopping = True
        watchdog.check()
        watchdog.check()
        watchdog.close()
        assert notifier.sent.count("STOPPING=1") == 1

    def test_exit_when_stuck_exits_with_code_1(self) -> None:
        probe = Probe()
        watchdog, _, exits = watchdog_for(probe, usec=None, exit_when_stuck=True)
        assert watchdog.interval_s == CHECK_INTERVAL_S
        probe.alive = False
        with capture_logs() as logs:
            watchdog.check()
        assert exits == [EXIT_STUCK]
        assert logs[0]["event"] == "relay.stuck"
        assert logs[0]["log_level"] == "error"

    def test_start_says_ready_and_close_says_stopping(self) -> None:
        probe = Probe()
        watchdog, notifier, _ = watchdog_for(probe)
        watchdog.start().close()
        assert notifier.sent[0] == "READY=1"
        assert notifier.sent[-1] == "STOPPING=1"
