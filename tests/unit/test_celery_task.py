"""publish_task's message against the one Celery itself builds for protocol 2."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.celery_task import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    delay_for,
    task_body,
    task_headers,
    task_message,
)
from outbox_relay.errors import InvalidMessageError

celery = pytest.importorskip("celery")
kombu_serialization = pytest.importorskip("kombu.serialization")

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def celery_message(task_id: str, name: str, **options: object) -> object:
    app = celery.Celery("outbox-test", set_as_current=False)
    return app.amqp.as_task_v2(task_id, name, **options)


@pytest.mark.parametrize(
    ("args", "kwargs", "options"),
    [
        ((2, 3), {}, {}),
        ([], {"order": "o-42", "lines": [1, 2.5, None]}, {}),
        (
            (1,),
            {"y": True},
            {
                "time_limit": 3.0,
                "soft_time_limit": 1.5,
                "ignore_result": True,
                "shadow": "renamed",
                "expires": NOW + dt.timedelta(minutes=5),
            },
        ),
    ],
)
def test_headers_and_body_are_what_celery_builds(
    args: tuple[object, ...], kwargs: dict[str, object], options: dict[str, object]
) -> None:
    task_id = str(uuid.uuid4())
    theirs = celery_message(task_id, "app.tasks.add", args=args, kwargs=kwargs, **options)
    assert task_headers(task_id, "app.tasks.add", args, kwargs, **options) == theirs.headers  # type: ignore[attr-defined, arg-type]
    assert json.loads(json.dumps(task_body(args, kwargs))) == json.loads(
        json.dumps(theirs.body)  # type: ignore[attr-defined]
    )
    assert theirs.properties == {"correlation_id": task_id, "reply_to": ""}  # type: ignore[attr-defined]


def test_a_long_argsrepr_is_cut_at_celerys_limit() -> None:
    # Only for display (flower, logs): Celery cuts inside the values, this cuts the end.
    headers = task_headers("t", "app.tasks.add", ("x" * 2000,), {"k": "y" * 2000})
    assert len(headers["argsrepr"]) == len(headers["kwargsrepr"]) == 1024  # type: ignore[arg-type]
    assert str(headers["argsrepr"]).startswith("('xxx")


def test_content_type_and_encoding_are_kombus_json() -> None:
    content_type, content_encoding, _ = kombu_serialization.dumps([[], {}, {}], serializer="json")
    assert (content_type, content_encoding) == (CONTENT_TYPE, CONTENT_ENCODING)


def test_a_countdown_or_eta_becomes_the_outbox_delay() -> None:
    assert delay_for(None, None, NOW) is None
    assert delay_for(10, None, NOW) == 10
    assert delay_for(None, NOW + dt.timedelta(seconds=90), NOW) == 90
    assert delay_for(None, (NOW + dt.timedelta(seconds=5)).replace(tzinfo=None), NOW) == 5


@given(st.floats(min_value=-1e6, max_value=0, allow_nan=False))
def test_a_task_already_due_is_not_held(seconds: float) -> None:
    assert delay_for(seconds, None, NOW) is None
    assert delay_for(None, NOW + dt.timedelta(seconds=seconds), NOW) is None


def test_the_module_does_not_import_celery() -> None:
    code = (
        "import sys, outbox_relay.celery_task; "
        "sys.exit(1 if {'celery', 'kombu'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_task_message_is_addressed_and_identified_as_celery_sends_it() -> None:
    message = task_message("app.tasks.add", (1, 2), queue="billing", priority=3, task_id="t-1")
    assert (message.exchange, message.routing_key) == ("", "billing")
    assert message.message_id == message.correlation_id == "t-1"
    assert message.priority == 3
    assert message.payload == task_body((1, 2), {})
    routed = task_message("app.tasks.add", exchange="tasks", routing_key="add.high")
    assert (routed.exchange, routed.routing_key) == ("tasks", "add.high")
    assert uuid.UUID(str(routed.message_id)).version == 4  # as Celery makes task ids


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"countdwn": 5}, "countdwn: not an option of a task; use queue, exchange"),
        ({"countdown": 5, "eta": NOW}, "countdown and eta: give one of them, not both"),
    ],
)
def test_a_wrong_option_is_refused_by_name(options: dict[str, object], error: str) -> None:
    with pytest.raises(InvalidMessageError, match=error):
        task_message("app.tasks.add", **options)  # type: ignore[arg-type]
