"""Celery tasks sent through the outbox and run by a real Celery worker (prefork pool)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox_relay.celery_task import publish_task, publish_task_async
from outbox_relay.consumer import lenient_frames
from tests.support.broker import BrokerHelper
from tests.support.relay import outbox_rows, running_relay, wait_for

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def celery_worker(amqp_url: str, queue: str, record: Path) -> Iterator[None]:
    """``celery worker`` in a process group of its own, stopped with all its children."""
    env = {
        **os.environ,
        "CELERY_TEST_BROKER_URL": amqp_url,
        "CELERY_TEST_QUEUE": queue,
        "CELERY_TEST_RECORD": str(record),
    }
    log = record.with_suffix(".log")
    with log.open("w") as out:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "tests.support.celery_app", "worker",
                "-Q", queue, "--pool=prefork", "-c", "1", "-l", "info",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        with contextlib.suppress(ProcessLookupError):  # a pool child the TERM missed
            os.killpg(worker.pid, signal.SIGKILL)
        print(log.read_text())  # shown when the test fails


def ran(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_a_task_sent_through_the_outbox_runs_on_a_celery_worker(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper, tmp_path: Path
) -> None:
    queue = broker.queue("celery")
    broker.track_exchange(queue)  # the worker declares its queue's exchange
    record = tmp_path / "ran.jsonl"
    with psycopg.connect(database_url) as conn:
        publish_task(
            conn, "outbox_test.add", args=(40, 2), kwargs={"note": "rolled back"},
            queue=queue, schema=schema,
        )  # fmt: skip
        conn.rollback()
        task_id = publish_task(
            conn, "outbox_test.add", args=(2, 3), kwargs={"note": "committed"},
            queue=queue, schema=schema,
        )  # fmt: skip
        sleepy_id = publish_task(
            conn, "outbox_test.sleep", args=(4.0,), queue=queue, schema=schema,
            time_limit=3.0, soft_time_limit=1.5,
        )  # fmt: skip
        conn.commit()

    async def publish_async() -> str:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await publish_task_async(
                conn, "outbox_test.add", args=(7, 8), kwargs={"note": "async"},
                queue=queue, schema=schema,
            )  # fmt: skip

    async_id = asyncio.run(publish_async())
    assert len(outbox_rows(database_url, schema)) == 3  # the rolled-back task is gone

    with running_relay(database_url, amqp_url, schema), celery_worker(amqp_url, queue, record):
        assert wait_for(lambda: len(ran(record)) >= 3, timeout_s=30), ran(record)

    assert sorted(ran(record), key=lambda entry: (entry["task"], entry.get("result", 0))) == [
        {"task": "add", "id": task_id, "args": [2, 3], "note": "committed", "result": 5},
        {"task": "add", "id": async_id, "args": [7, 8], "note": "async", "result": 15},
        {"task": "sleep", "id": sleepy_id, "raised": "SoftTimeLimitExceeded"},
    ]


def test_the_relay_sends_the_message_celery_would_send(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    lenient_frames.install_field_codec()  # read doubles as kombu does
    queue = broker.queue("celery")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    options: dict[str, Any] = {"time_limit": 3.0, "soft_time_limit": 1.5, "expires": expires}
    with psycopg.connect(database_url) as conn:
        task_id = publish_task(
            conn, "app.tasks.add", args=(2, 3), kwargs={"z": [1.5]}, queue=queue,
            schema=schema, priority=7, countdown=0.5, **options,
        )  # fmt: skip
        conn.commit()
    [(held,)] = outbox_rows(database_url, schema, "available_at - created_at")
    assert held >= dt.timedelta(seconds=0.4)  # countdown is the outbox's own delay

    with running_relay(database_url, amqp_url, schema):
        [received] = broker.drain(queue, expect=1)

    app = celery.Celery("outbox-test", set_as_current=False)
    theirs = app.amqp.as_task_v2(task_id, "app.tasks.add", (2, 3), {"z": [1.5]}, **options)
    props = received.properties
    assert received.exchange == ""
    assert props.headers == theirs.headers
    assert [type(limit) for limit in props.headers["timelimit"]] == [float, float]
    assert json.loads(received.body) == json.loads(json.dumps(theirs.body))
    assert (props.correlation_id, props.message_id) == (task_id, task_id)
    assert (props.content_type, props.content_encoding) == ("application/json", "utf-8")
    assert (props.priority, props.delivery_mode) == (7, 2)
    assert 3_500_000 < int(props.expiration) <= 3_600_000  # ms, as Celery's send_task sets
