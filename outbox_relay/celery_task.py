"""Celery tasks through the outbox: a task message that leaves only if the transaction commits.

Pure apart from the one write to the outbox; Celery is never imported.
:func:`publish_task` (and :func:`publish_task_async`) writes the message Celery 5's
``app.send_task`` puts on the wire with task protocol 2
(``celery.app.amqp.AMQP.as_task_v2`` and kombu's JSON serializer): the task id as
``correlation_id``, the task's headers, and the body
``[args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]`` as ``application/json``
in ``utf-8``. By default it goes through the default exchange to the queue named
``queue``, as Celery sends to a direct queue.

``countdown`` and ``eta`` become the outbox's own ``delay``: the row waits in the outbox
until it is due, and the task reaches the broker then. Celery's ``eta`` header is left
empty, so the worker runs the task when it arrives rather than holding it again by its
own clock in memory, unacknowledged.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypedDict

from outbox_relay.errors import InvalidMessageError
from outbox_relay.message import OutboxMessage
from outbox_relay.producer import DEFAULT_SCHEMA, publish_many, publish_many_async

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
# celery.app.amqp.AMQP.argsrepr_maxsize and kwargsrepr_maxsize
REPR_MAX_CHARS = 1024


class TaskOptions(TypedDict, total=False):
    """What :func:`task_message` (and so :func:`publish_task`) takes besides the task:

    ``queue`` (default ``"celery"``) with ``exchange`` (default ``""``, the default
    exchange) and ``routing_key`` (default: the queue's name); ``task_id`` (default a
    random UUID4, as Celery makes); ``countdown`` (seconds) or ``eta`` (a datetime; naive
    is UTC), which hold the message in the outbox until due; ``expires`` (seconds from
    now or a datetime), ``time_limit`` and ``soft_time_limit`` (seconds), ``priority``,
    ``reply_to``, ``ignore_result`` and ``shadow``, which mean what they mean to
    ``apply_async``; and the outbox's ``partition_key``.
    """

    queue: str
    exchange: str
    routing_key: str | None
    task_id: str | None
    countdown: float | None
    eta: dt.datetime | None
    expires: float | dt.datetime | None
    time_limit: float | None
    soft_time_limit: float | None
    priority: int | None
    reply_to: str | None
    ignore_result: bool
    shadow: str | None
    partition_key: str | None


def task_message(
    name: str,
    args: Sequence[object] = (),
    kwargs: Mapping[str, object] | None = None,
    **options: Unpack[TaskOptions],
) -> OutboxMessage:
    """The outbox message of Celery task ``name`` (see :class:`TaskOptions`), for
    ``publish_many`` and ``publish_many_async``; its ``message_id`` is the task id.
    ``args`` and ``kwargs`` must be JSON-serialisable. Raises
    :class:`InvalidMessageError`."""
    if not isinstance(args, (list, tuple)):
        raise InvalidMessageError(
            f"args: expected a list or tuple, got {type(args).__name__}; pass args=(value,)"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidMessageError(f"kwargs: expected a mapping, got {type(kwargs).__name__}")
    unknown = set(options) - set(TaskOptions.__annotations__)
    if unknown:
        raise InvalidMessageError(
            f"{', '.join(sorted(unknown))}: not an option of a task; use "
            f"{', '.join(TaskOptions.__annotations__)}"
        )
    countdown, eta = options.get("countdown"), options.get("eta")
    if countdown is not None and eta is not None:
        raise InvalidMessageError("countdown and eta: give one of them, not both")
    now = dt.datetime.now(dt.timezone.utc)
    task_id = options.get("task_id") or str(uuid.uuid4())
    expires_at, expiration = _expiry(options.get("expires"), now)
    headers = task_headers(
        task_id,
        name,
        args,
        kwargs or {},
        expires=expires_at,
        time_limit=options.get("time_limit"),
        soft_time_limit=options.get("soft_time_limit"),
        ignore_result=options.get("ignore_result", False),
        shadow=options.get("shadow"),
    )
    queue = options.get("queue", "celery")
    routing_key = options.get("routing_key")
    return OutboxMessage(
        exchange=options.get("exchange", ""),
        routing_key=queue if routing_key is None else routing_key,
        payload=task_body(args, kwargs or {}),
        headers=headers,
        message_id=task_id,
        partition_key=options.get("partition_key"),
        delay=delay_for(countdown, eta, now),
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        correlation_id=task_id,
        reply_to=options.get("reply_to") or None,
        priority=options.get("priority"),
        expiration=expiration,
    )


def publish_task(
    conn: object,
    name: str,
    args: Sequence[object] = (),
    kwargs: Mapping[str, object] | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    **options: Unpack[TaskOptions],
) -> str:
    """Write Celery task ``name`` into the outbox in the transaction open on ``conn``
    (anything :func:`~outbox_relay.producer.publish` takes), with the options of
    :class:`TaskOptions`. Returns the task id, which is also the message id. Raises
    :class:`InvalidMessageError` before writing anything."""
    (task_id,) = publish_many(conn, [task_message(name, args, kwargs, **options)], schema=schema)
    return task_id


async def publish_task_async(
    conn: object,
    name: str,
    args: Sequence[object] = (),
    kwargs: Mapping[str, object] | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    **options: Unpack[TaskOptions],
) -> str:
    """:func:`publish_task` for the async connections
    :func:`~outbox_relay.producer.publish_async` takes."""
    message = task_message(name, args, kwargs, **options)
    (task_id,) = await publish_many_async(conn, [message], schema=schema)
    return task_id


def task_headers(
    task_id: str,
    name: str,
    args: Sequence[object],
    kwargs: Mapping[str, object],
    *,
    expires: dt.datetime | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    ignore_result: bool = False,
    shadow: str | None = None,
) -> dict[str, object]:
    """The protocol 2 headers of a new task (not a retry, not part of a workflow)."""
    return {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": shadow,
        "eta": None,
        "expires": expires.isoformat() if expires else None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": _repr(tuple(args)),
        "kwargsrepr": _repr(dict(kwargs)),
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def task_body(args: Sequence[object], kwargs: Mapping[str, object]) -> list[object]:
    """``[args, kwargs, embed]``, the body ``publish`` encodes as JSON."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return [list(args), dict(kwargs), embed]


def _repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= REPR_MAX_CHARS else text[: REPR_MAX_CHARS - 3] + "..."


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def delay_for(countdown: float | None, eta: dt.datetime | None, now: dt.datetime) -> float | None:
    """The outbox delay (seconds, or None) that holds a task back until its countdown or
    eta; a naive eta is UTC."""
    if eta is not None:
        seconds = (_aware(eta) - now).total_seconds()
    elif countdown is not None:
        seconds = countdown
    else:
        return None
    return seconds if seconds > 0 else None  # due already: Celery runs it at once too


def _expiry(
    expires: float | dt.datetime | None, now: dt.datetime
) -> tuple[dt.datetime | None, float | None]:
    """The ``expires`` header's time and the AMQP ``expiration`` (seconds, at least 0),
    as Celery's ``send_task`` sets both."""
    if expires is None:
        return None, None
    at = (
        _aware(expires) if isinstance(expires, dt.datetime) else now + dt.timedelta(seconds=expires)
    )
    return at, max((at - now).total_seconds(), 0.0)
