"""`outbox-relay run` as a process: configuration, logs and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

import outbox_relay
from outbox_relay import OutboxMessage
from tests.support.broker import BrokerHelper
from tests.support.relay import outbox_rows, wait_for

pytestmark = pytest.mark.integration


def start_relay(
    database_url: str,
    amqp_url: str | None,
    schema: str,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``outbox-relay run`` with JSON logs; ``amqp_url=None`` leaves the variable unset."""
    env = {
        **os.environ,
        "OUTBOX_RELAY_DATABASE_URL": database_url,
        "OUTBOX_RELAY_SCHEMA": schema,
        **(env or {}),
    }
    if amqp_url is not None:
        env["OUTBOX_RELAY_AMQP_URL"] = amqp_url
    return subprocess.Popen(
        [sys.executable, "-m", "outbox_relay", "run", "--log-format", "json", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_once_logged(relay: subprocess.Popen[str], event: str, timeout_s: float = 30) -> str:
    """SIGINT once the relay logged ``event`` (not after a fixed time: on a busy machine the
    signal could arrive while Python still imports); its stderr once it exited with 0."""
    lines: list[str] = []
    assert relay.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(relay.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        logged = wait_for(
            lambda: any(f'"event": "{event}"' in line for line in lines), timeout_s=timeout_s
        )
        relay.send_signal(signal.SIGINT)
        relay.wait(timeout=15)
    finally:
        if relay.poll() is None:
            relay.kill()
        reader.join(timeout=5)
        for pipe in (relay.stdout, relay.stderr):
            if pipe is not None:
                pipe.close()
    stderr = "".join(lines)
    assert logged, f"the relay never logged {event}: {stderr[-2000:]}"
    assert relay.returncode == 0, stderr
    return stderr


def test_sigterm_finishes_and_settles_the_batch_in_flight_then_exits_0(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    total = 20_000
    with psycopg.connect(database_url) as conn:
        for start in range(0, total, 5000):
            outbox_relay.publish_many(
                conn,
                [
                    OutboxMessage(exchange=exchange, routing_key="k", payload={"n": n})
                    for n in range(start, start + 5000)
                ],
                schema=schema,
            )
        conn.commit()

    relay = start_relay(database_url, amqp_url, schema, "--batch-size", "100")
    try:
        assert wait_for(lambda: broker.depth(queue) >= 2000, timeout_s=30), (
            "the relay published nothing"
        )
        relay.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        _, stderr = relay.communicate(timeout=15)
    finally:
        if relay.poll() is None:
            relay.kill()
    assert relay.returncode == 0, stderr
    assert time.monotonic() - stopped_at < 5

    published = [json.loads(m.body)["n"] for m in broker.collect(queue)]
    remaining_ids = {row[0] for row in outbox_rows(database_url, schema, "payload")}
    left = {json.loads(bytes(p))["n"] for p in remaining_ids}
    assert len(published) == len(set(published)), "a message was published twice"
    assert not set(published) & left, "a published row was not settled"
    assert set(published) | left == set(range(total)), "a message was lost"
    assert len(published) < total, (
        "the relay drained everything before SIGTERM; the test proved nothing"
    )
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert events[0] == "relay.starting"
    assert "relay.stopping" in events
    assert events[-1] == "relay.stopped"


def test_logs_are_json_and_never_show_a_password(database_url: str, schema: str) -> None:
    relay = start_relay(database_url, "amqp://guest:s3cr3t-pw@127.0.0.1:1/%2F", schema)
    stderr = interrupt_once_logged(relay, "relay.broker_unavailable")
    records = [json.loads(line) for line in stderr.splitlines()]
    assert "s3cr3t-pw" not in stderr
    outages = [r for r in records if r["event"] == "relay.broker_unavailable"]
    assert len(outages) == 1, "an outage is logged once, not once per retry"
    assert records[0]["broker"] == "amqp://guest:***@127.0.0.1:1/%2F"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--amqp-url", "http://x"], "--amqp-url"),
        (["--poll-interval", "-1"], "--poll-interval must be positive"),
        (["--schema", "x" * 64], "longer than 63 bytes"),
    ],
)
def test_bad_configuration_is_refused_before_connecting(args: list[str], message: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "outbox_relay",
            "run",
            "--database-url",
            "postgresql://127.0.0.1:1/x",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
