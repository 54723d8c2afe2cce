"""One registered handler: the function, the queue it consumes, its settings, and how the
consumer calls it (each parameter filled by its name or annotation, see
:mod:`outbox_relay.consumer.signature`).

What ``@app.handler(...)`` (:class:`~outbox_relay.consumer.app.ConsumerApp`) returns;
:func:`check_handler` rejects settings that cannot work before anything connects.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec

from outbox_relay.consumer.aio import HandlerLoop
from outbox_relay.consumer.declare import queue_spec, retry_route
from outbox_relay.consumer.failure import RetryRoute
from outbox_relay.consumer.message import Message
from outbox_relay.consumer.payload import Validator, decode_payload
from outbox_relay.consumer.policy import ErrorPolicy
from outbox_relay.consumer.rate_limit import KeySpec, RateLimit
from outbox_relay.consumer.signature import CallPlan, Role
from outbox_relay.errors import ConfigurationError
from outbox_relay.topology import QueueSpec
from outbox_relay.validation import require

BROKER_CONSUMER_TIMEOUT_S = 30 * 60.0  # RabbitMQ's default consumer_timeout
QUEUE_TYPES = ("classic", "quorum")

P = ParamSpec("P")


@dataclass(frozen=True, eq=False)
class Handler(Generic[P]):
    """One registered handler: the function, the queue it consumes and its settings.

    What ``@app.handler(...)`` returns. Calling it calls the function as written (so a unit
    test can call ``on_order(message, tx)``); :meth:`invoke` runs it as the consumer does,
    with each parameter filled by its name or annotation (see
    :mod:`outbox_relay.consumer.signature`).
    """

    func: Callable[P, object]
    name: str
    exchange: str
    queue: str
    bindings: tuple[str, ...]
    max_attempts: int
    retry_delays_s: tuple[float, ...]
    timeout_s: float
    queue_type: str
    declare_exchange: bool
    spec: QueueSpec = field(init=False)  # the queue's topology, made of the fields above
    plan: CallPlan
    app_name: str = ""  # the consumer app's name (with the queue, it keys the inbox)
    schema: str = "public"  # where the app's inbox is
    validate: Validator | None = field(default=None, repr=False)
    # Its own worker pool of this many threads (prefetch: this x prefetch_multiplier);
    # None: it shares the app's pool of ConsumerApp.concurrency threads.
    concurrency: int | None = None
    # Which exceptions retry and which park at once (retry_on=, park_on=).
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    rate_limit: RateLimit | None = None  # shared by every process of the app (gate.py)
    rate_key: KeySpec | None = None  # a bucket per key; None: one bucket
    max_priority: int | None = None  # a priority queue (classic queues); None: not one

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", queue_spec(self))  # raises ConfigurationError
        for attribute in functools.WRAPPER_ASSIGNMENTS:
            if hasattr(self.func, attribute):
                object.__setattr__(self, attribute, getattr(self.func, attribute))
        object.__setattr__(self, "__wrapped__", self.func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> object:
        """Call the function itself, with the arguments given."""
        return self.func(*args, **kwargs)

    @property
    def uses_db(self) -> bool:
        """The handler runs in the inbox transaction: it takes ``tx`` or a Session."""
        return self.plan.uses_db

    @property
    def route(self) -> RetryRoute:
        return retry_route(self.spec)

    @property
    def inbox_key(self) -> str:
        """The consumer column of this handler's inbox rows."""
        return f"{self.app_name}:{self.queue}"

    def payload(self, message: Message) -> object:
        """``message``'s body as the payload parameter's type (None when the handler takes
        none); InvalidPayloadError when it does not fit."""
        if self.plan.payload_type is None or self.validate is None:
            return None
        return decode_payload(
            message, self.plan.payload_type, self.validate, where=f"handler {self.name}"
        )

    @property
    def is_async(self) -> bool:
        """An ``async def`` handler: it runs on an event loop (see
        :mod:`outbox_relay.consumer.aio`)."""
        return self.plan.is_async

    def invoke(self, message: Message, tx: Any = None, *, loop: HandlerLoop | None = None) -> None:
        """Run the handler on ``message`` as the consumer does, inside ``tx`` when it takes
        one (a ``psycopg.AsyncConnection`` for an async handler, which runs on ``loop``, or
        on a loop of its own when none is given). Raises InvalidPayloadError (park) or
        whatever the handler raises."""
        values: dict[Role, object] = {Role.MESSAGE: message, Role.TX: tx}
        if self.plan.payload_type is not None:
            values[Role.PAYLOAD] = self.payload(message)
        if self.plan.is_async:
            runner = loop if loop is not None else HandlerLoop()
            try:
                runner.run(self._invoke_async(values, tx), name=self.name)
            finally:
                if loop is None:
                    runner.close()
            return
        if not self.plan.wants_session:
            self._call(values)
            return
        from outbox_relay.consumer.orm import bound_session  # noqa: PLC0415 - SQLAlchemy when used

        with bound_session(tx) as session:
            values[Role.SESSION] = session
            self._call(values)
            session.commit()  # releases the savepoint; the runner commits the transaction

    def _call(self, values: dict[Role, object]) -> None:
        args, kwargs = self.plan.call_arguments(values)
        returned = self.func(*args, **kwargs)
        if inspect.isawaitable(returned):
            if inspect.iscoroutine(returned):
                returned.close()  # never awaited: no "coroutine was never awaited" warning
            raise ConfigurationError(
                f"handler {self.name} returned an awaitable: the SDK took it for a plain "
                "function, so nothing would await it; declare the handler itself with "
                "async def"
            )

    async def _invoke_async(self, values: dict[Role, object], tx: Any) -> None:
        if not self.plan.wants_session:
            args, kwargs = self.plan.call_arguments(values)
            await self.func(*args, **kwargs)  # type: ignore[misc]  # plan_call: a coroutine function
            return
        from outbox_relay.consumer.orm import bound_async_session  # noqa: PLC0415 - when used

        async with bound_async_session(tx) as session:
            values[Role.SESSION] = session
            args, kwargs = self.plan.call_arguments(values)
            await self.func(*args, **kwargs)  # type: ignore[misc]  # plan_call: a coroutine function
            await session.commit()  # releases the savepoint; the runner commits


def check_handler(handler: Handler[...], *, taken: Sequence[str]) -> None:
    """Reject a handler whose settings cannot work, naming the fix."""
    where = f"handler {handler.name} (queue {handler.queue!r})"
    checks = [
        (bool(handler.exchange), "exchange: name the topic exchange to bind to"),
        (bool(handler.queue), "queue: name the queue to consume"),
        (handler.queue not in taken, "queue: another handler of this app consumes it"),
        (bool(handler.bindings), "bindings: give at least one routing key pattern"),
        (handler.max_attempts >= 1, "max_attempts must be at least 1"),
        (bool(handler.retry_delays_s), "retry_delays: give at least one delay in seconds"),
        (all(d > 0 for d in handler.retry_delays_s), "retry_delays must be positive"),
        (
            len(set(handler.retry_delays_s)) == len(handler.retry_delays_s),
            "retry_delays: list each delay once (one delay queue per delay)",
        ),
        (
            0 < handler.timeout_s < BROKER_CONSUMER_TIMEOUT_S,
            "timeout must be positive and well under RabbitMQ's 30-minute consumer_timeout",
        ),
        (handler.queue_type in QUEUE_TYPES, f"queue_type: one of {', '.join(QUEUE_TYPES)}"),
        (
            handler.concurrency is None
            or (type(handler.concurrency) is int and handler.concurrency >= 1),
            (
                f"concurrency must be a whole number, at least 1 (got "
                f"{handler.concurrency!r}): the messages of this queue it may run at once; "
                "leave it out to share the app's worker pool"
            ),
        ),
    ]
    require(checks, where=where)
