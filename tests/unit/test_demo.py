"""`make demo` names the services it cannot reach without printing their passwords."""

from __future__ import annotations

import socket
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.scripts import load_script

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo.py"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def load_demo(monkeypatch: pytest.MonkeyPatch, database_url: str, amqp_url: str) -> ModuleType:
    monkeypatch.setenv("OUTBOX_RELAY_DATABASE_URL", database_url)
    monkeypatch.setenv("OUTBOX_RELAY_AMQP_URL", amqp_url)
    return load_script(DEMO, "outbox_relay_demo", monkeypatch)


def test_unreachable_services_are_named_without_their_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = f"postgresql://root:S3cretPW@127.0.0.1:{closed_port()}/postgres"
    amqp_url = f"amqp://guest:Amqp5ecret@127.0.0.1:{closed_port()}/%2F"
    demo = load_demo(monkeypatch, database_url, amqp_url)

    with pytest.raises(SystemExit) as exit_info:
        demo.check_services()

    assert exit_info.value.code == 1
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "PostgreSQL is not reachable at postgresql://root:***@127.0.0.1:" in text
    assert "RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:" in text
    assert "S3cretPW" not in text
    assert "Amqp5ecret" not in text
