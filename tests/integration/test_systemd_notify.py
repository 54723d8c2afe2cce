"""`outbox-relay run` under a systemd watchdog: READY=1 at start, WATCHDOG=1 while its loop
goes round, STOPPING=1 on SIGTERM, all as datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def messages(sock: socket.socket, until: float) -> list[str]:
    got: list[str] = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            break
    return got


def test_the_relay_notifies_systemd_ready_watchdog_and_stopping(
    database_url: str, amqp_url: str, schema: str, tmp_path: Path
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        env = {
            **os.environ,
            "OUTBOX_RELAY_DATABASE_URL": database_url,
            "OUTBOX_RELAY_AMQP_URL": amqp_url,
            "OUTBOX_RELAY_SCHEMA": schema,
            "NOTIFY_SOCKET": str(path),
            "WATCHDOG_USEC": "1000000",  # WatchdogSec=1: a notification every 0.5 s
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "outbox_relay", "run", "--log-format", "json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            started = messages(server, time.monotonic() + 5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            stopped = messages(server, time.monotonic() + 1)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert started[0] == "READY=1"
    assert started.count("WATCHDOG=1") >= 5
    assert "STOPPING=1" in stopped
