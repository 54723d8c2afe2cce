"""Run a handler in a test, without a broker, and see what the consumer would do.

::

    from outbox_relay.consumer.testing import Action, run

    def test_an_order_is_billed(conn):              # a psycopg connection, autocommit off
        outcome = run(on_order, {"order_id": 7, "total": 9.5}, conn=conn)
        assert outcome.action is Action.ACK
        assert [m.routing_key for m in outcome.published] == ["invoice.created"]

:func:`run` builds the message as the consumer decodes one (JSON by default), fills the
handler's parameters as the consumer does, and reports an :class:`Outcome`: ``ack``
(handled, or a duplicate the inbox already holds), ``retry`` (with the delay queue it
would go to) or ``park`` (with the reason), and the outbox rows the handler wrote
through ``outbox_relay.publish`` in its transaction.

With ``conn`` the handler runs as a savepoint inside the test's transaction, after its
inbox row: a failure rolls back to the savepoint (the handler's work and inbox row go, the
test's own setup stays); a success leaves the work in the transaction for the test to
query, and commits it when ``commit=True``. The schema is the app's (``ConsumerApp(schema=
...)``): it needs the outbox and the inbox (``outbox-relay migrate``). A handler that
takes no transaction runs with no database at all. An ``async def`` handler runs the same
way, to completion on an event loop of its own, with ``conn`` (a ``Connection`` or an
``AsyncConnection``) handed to it as an ``AsyncConnection``; ``run`` stays a plain
function, also in async tests.

As a pytest plugin (``pytest_plugins = ["outbox_relay.consumer.testing"]``) it gives the
fixtures ``run_handler`` (:func:`run`, with ``outbox_test_connection`` when the handler
needs a database) and ``outbox_test_connection`` (a connection to
``OUTBOX_RELAY_TEST_DATABASE_URL``, rolled back after the test; override it to use your
own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from outbox_relay.consumer.errors import RateLimited, Retry, UndecodableMessageError
from outbox_relay.consumer.failure import ErrorInfo, destination
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.message import ATTEMPT_HEADER, Delivery, Message, decode
from outbox_relay.consumer.policy import Verdict
from outbox_relay.errors import ConfigurationError
from outbox_relay.properties import MAX_PRIORITY, expiration_ms
from outbox_relay.store.trial import TrialTransaction, WrittenRow, trial_connection

TEST_DATABASE_URL_ENV = "OUTBOX_RELAY_TEST_DATABASE_URL"

__all__ = [
    "Action",
    "Outcome",
    "WrittenRow",
    "make_message",
    "outbox_test_connection",
    "run",
    "run_handler",
]


class Action(enum.Enum):
    """What the consumer would do with the delivery."""

    ACK = "ack"  # handled (committed), or a duplicate
    RETRY = "retry"  # rolled back, sent to a delay queue
    PARK = "park"  # rolled back, sent to the parking lot
    PAUSE = "pause"  # RateLimited: rolled back, held; the handler pauses, no attempt counted


@dataclass(frozen=True)
class Outcome:
    """What became of one message. ``reason`` says why in words; ``next_queue`` is the
    delay queue or parking lot a failed message goes to; ``published`` the outbox rows
    the handler's transaction wrote (empty when it rolled back)."""

    action: Action
    reason: str
    message: Message | None
    published: tuple[WrittenRow, ...] = ()
    duplicate: bool = False
    committed: bool = False
    error: ErrorInfo | None = None
    exception: Exception | None = None
    next_queue: str | None = None
    delay_s: float | None = None

    def raise_error(self) -> None:
        """Raise what the handler raised, if anything (for a test to see the traceback)."""
        if self.exception is not None:
            raise self.exception


def make_message(
    body: object = None,
    *,
    routing_key: str = "test",
    exchange: str = "test",
    queue: str = "test",
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    content_type: str | None = None,
    attempt: int = 1,
    redelivered: bool = False,
    timestamp: int | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    priority: int | None = None,
    type: str | None = None,
    app_id: str | None = None,
    content_encoding: str | None = None,
    expiration: str | float | dt.timedelta | None = None,
    user_id: str | None = None,
) -> Message:
    """A :class:`Message` as the consumer decodes it. ``body`` other than bytes is sent
    as JSON (pydantic models, dataclasses and msgspec Structs included); bytes are sent
    as they are, with ``content_type``. ``attempt`` above 1 is a retried message.

    ``correlation_id`` to ``user_id`` are the AMQP properties of those names;
    ``expiration`` is given as ``publish`` takes it (seconds or a timedelta) or as AMQP
    carries it (milliseconds as text), and the message holds the text (``60`` gives
    ``"60000"``)."""
    if priority is not None and not 0 <= priority <= MAX_PRIORITY:
        raise ConfigurationError(
            f"priority: {priority} is not from 0 to {MAX_PRIORITY} (an AMQP octet)"
        )
    if expiration is not None and not isinstance(expiration, str):
        expiration = expiration_ms(expiration)
    if isinstance(body, bytes | bytearray):
        raw = bytes(body)
    else:
        raw = json.dumps(body, default=_jsonable).encode()
        content_type = content_type or "application/json"
    all_headers = dict(headers or {})
    if attempt > 1:
        all_headers[ATTEMPT_HEADER] = attempt - 1
    delivery = Delivery(
        body=raw,
        exchange=exchange,
        routing_key=routing_key,
        redelivered=redelivered,
        message_id=message_id or str(uuid.uuid4()),
        content_type=content_type,
        headers=all_headers,
        timestamp=timestamp,
        queue=queue,
        correlation_id=correlation_id,
        reply_to=reply_to,
        priority=priority,
        type=type,
        app_id=app_id,
        content_encoding=content_encoding,
        expiration=expiration,
        user_id=user_id,
    )
    return decode(delivery)


def run(
    handler: Handler[...],
    body: object = None,
    *,
    conn: object = None,
    commit: bool = False,
    **message_fields: Any,
) -> Outcome:
    """Run ``handler`` on ``body`` (or on a :class:`Message` given as ``body``), inside a
    savepoint of ``conn``'s transaction when the handler takes one; see the module.

    An ``async def`` handler runs to completion on an event loop of its own, with ``conn``
    (a ``Connection`` or an ``AsyncConnection``) seen as an ``AsyncConnection``. Called
    from a coroutine (an async test), ``run`` blocks that test's loop while the handler
    runs on another thread's loop."""
    if not isinstance(handler, Handler):
        raise ConfigurationError(
            f"{handler!r} is not a registered handler: decorate it with @app.handler(...)"
        )
    if handler.is_async and _loop_running():
        return _on_another_thread(
            lambda: _run(handler, body, conn=conn, commit=commit, message_fields=message_fields)
        )
    return _run(handler, body, conn=conn, commit=commit, message_fields=message_fields)


def _run(
    handler: Handler[...],
    body: object,
    *,
    conn: object,
    commit: bool,
    message_fields: dict[str, Any],
) -> Outcome:
    fields = {"routing_key": handler.bindings[0], "exchange": handler.exchange, **message_fields}
    try:
        message = (
            body if isinstance(body, Message) else make_message(body, queue=handler.queue, **fields)
        )
    except UndecodableMessageError as exc:
        return _failed(handler, None, exc)
    if not handler.uses_db:
        try:
            handler.invoke(message)
        except Exception as exc:  # noqa: BLE001 - reported as the consumer would
            return _failed(handler, message, exc)
        return Outcome(Action.ACK, "handled", message)
    if conn is None:
        raise ConfigurationError(
            f"handler {handler.name} takes a transaction: pass conn= (a psycopg Connection "
            "or AsyncConnection with autocommit off), or use the run_handler fixture; to "
            "test it with no database, call it directly with a stand-in: handler(message, tx)"
        )
    return _run_in_transaction(
        handler, message, TrialTransaction(conn, schema=handler.schema), commit=commit
    )


def _run_in_transaction(
    handler: Handler[...], message: Message, trial: TrialTransaction, *, commit: bool
) -> Outcome:
    if not message.message_id:
        return _failed(
            handler,
            message,
            UndecodableMessageError(
                "the message has no message_id, so the inbox cannot deduplicate it"
            ),
        )
    written: list[WrittenRow] = []
    try:
        with trial.savepoint():
            fresh = trial.record(consumer=handler.inbox_key, message_id=message.message_id)
            if fresh:
                handler.invoke(message, trial.tx(is_async=handler.is_async))
                written = trial.written()
    except Exception as exc:  # noqa: BLE001 - reported as the consumer would
        return _failed(handler, message, exc)
    if commit:
        trial.commit()
    reason = (
        "handled"
        if fresh
        else f"duplicate: {handler.inbox_key} already handled message {message.message_id}"
    )
    return Outcome(
        Action.ACK,
        reason,
        message,
        published=tuple(written),
        duplicate=not fresh,
        committed=commit,
    )


def _failed(handler: Handler[...], message: Message | None, exc: Exception) -> Outcome:
    error = ErrorInfo.from_exception(exc)
    if isinstance(exc, RateLimited):
        return Outcome(
            Action.PAUSE,
            f"rate limited: {handler.name} pauses for {exc.retry_after:g} s in every "
            "process, then runs this message again; no attempt counted",
            message,
            error=error,
            exception=exc,
            delay_s=exc.retry_after,
        )
    attempt = message.attempt if message is not None else 1
    at_once = handler.policy.verdict(exc) is Verdict.PARK
    where = destination(
        handler.route,
        attempt=attempt,
        reject=at_once,
        requested_delay_s=exc.delay if isinstance(exc, Retry) else None,
    )
    reason = f"{error.type}: {error.message}"
    why = handler.policy.reason(exc)
    if why is not None:
        reason = f"{reason} ({why})"
    elif where.parked and not at_once:
        reason = f"attempt {attempt} of {handler.max_attempts} failed, none left: {reason}"
    return Outcome(
        Action.PARK if where.parked else Action.RETRY,
        reason,
        message,
        error=error,
        exception=exc,
        next_queue=where.queue,
        delay_s=where.delay_s,
    )


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _on_another_thread(call: Callable[[], Outcome]) -> Outcome:
    """``call()`` on a thread of its own (an event loop runs on this one); what it
    returns, or raises."""
    box: list[Outcome] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="outbox-relay-testing-run")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box[0]


def _jsonable(value: object) -> Any:
    if hasattr(value, "model_dump"):  # pydantic
        return value.model_dump(mode="json")
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -- pytest plugin ----------------------------------------------------------------------
# pytest is not a dependency of outbox-relay: without it, run() and the rest work, and
# only the fixtures are missing.

RunHandler = Callable[..., Outcome]

try:
    import pytest
except ImportError:
    pass
else:

    @pytest.fixture
    def outbox_test_connection() -> Iterator[object]:
        """A psycopg connection (autocommit off) to ``OUTBOX_RELAY_TEST_DATABASE_URL``,
        rolled back and closed after the test. Override this fixture to hand in your own."""
        url = os.environ.get(TEST_DATABASE_URL_ENV)
        if not url:
            pytest.fail(
                f"set {TEST_DATABASE_URL_ENV} to a PostgreSQL database whose schema has the "
                "outbox and the inbox (`outbox-relay migrate`), or override the "
                "outbox_test_connection fixture"
            )
        with trial_connection(url) as conn:
            yield conn

    @pytest.fixture
    def run_handler(request: pytest.FixtureRequest) -> RunHandler:
        """:func:`run`, in ``outbox_test_connection``'s transaction when the handler takes
        one."""

        def run_it(handler: Handler[...], body: object = None, **kwargs: Any) -> Outcome:
            if handler.uses_db and kwargs.get("conn") is None:
                kwargs["conn"] = request.getfixturevalue("outbox_test_connection")
            return run(handler, body, **kwargs)

        return run_it
