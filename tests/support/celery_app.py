"""The Celery app a real worker runs in the Celery tests (tests/integration/test_celery.py).

The worker is started as ``celery -A tests.support.celery_app worker`` with its broker,
queue and record file in the environment. Each task appends one JSON line to the record
file, so the test reads what ran, with which id and arguments, without a result backend.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

BROKER_ENV = "CELERY_TEST_BROKER_URL"
QUEUE_ENV = "CELERY_TEST_QUEUE"
RECORD_ENV = "CELERY_TEST_RECORD"

app = Celery("outbox_test", broker=os.environ.get(BROKER_ENV, "amqp://"))
app.conf.update(
    task_default_queue=os.environ.get(QUEUE_ENV, "celery"),
    task_ignore_result=True,
    worker_enable_remote_control=False,  # no pidbox exchanges and queues left behind
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    accept_content=["json"],
)


def record(**entry: Any) -> None:
    with Path(os.environ[RECORD_ENV]).open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


@app.task(bind=True, name="outbox_test.add")
def add(self: Task, x: int, y: int, *, note: str = "") -> int:
    record(task="add", id=self.request.id, args=[x, y], note=note, result=x + y)
    return x + y


@app.task(bind=True, name="outbox_test.sleep")
def sleep(self: Task, seconds: float) -> None:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded as exc:
        record(task="sleep", id=self.request.id, raised=type(exc).__name__)
        return
    record(task="sleep", id=self.request.id, raised=None)
