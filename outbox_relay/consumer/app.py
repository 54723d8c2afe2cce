"""The application object: handlers registered with a decorator, and how to run them.

``ConsumerApp`` only collects configuration; nothing connects and nothing reads the
environment until :meth:`ConsumerApp.run` (or ``outbox-relay consume``) starts a
:class:`~outbox_relay.consumer.runner.Runner`.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec

from outbox_relay.consumer.aio import HandlerLoop
from outbox_relay.consumer.declare import queue_spec, retry_route
from outbox_relay.consumer.failure import RetryRoute
from outbox_relay.consumer.message import Message
from outbox_relay.consumer.payload import Validator, decode_payload, validator_for
from outbox_relay.consumer.policy import ErrorPolicy, exception_classes
from outbox_relay.consumer.rate_limit import KeyFunction, KeySpec, RateLimit, flow_settings
from outbox_relay.consumer.signature import CallPlan, Role, plan_call
from outbox_relay.dead_peer import (
    DEAD_PEER_TIMEOUT_RULE,
    DEAD_PEER_TIMEOUT_S,
    usable_dead_peer_timeout,
)
from outbox_relay.errors import ConfigurationError
from outbox_relay.misconfiguration import UNHEALTHY_AFTER_S
from outbox_relay.store.deadline import DB_TIMEOUT_RULE, DB_TIMEOUT_S, usable_db_timeout
from outbox_relay.store.sqlfiles import validate_schema_name
from outbox_relay.topology import QueueSpec

MAX_ATTEMPTS = 5
RETRY_DELAYS_S = (1.0, 10.0, 60.0)
HANDLER_TIMEOUT_S = 30.0
BROKER_CONSUMER_TIMEOUT_S = 30 * 60.0  # RabbitMQ's default consumer_timeout
CONCURRENCY = 4
PREFETCH_MULTIPLIER = 2
SHUTDOWN_GRACE_S = 30.0
INBOX_RETENTION_S = 7 * 24 * 3600.0
INBOX_PURGE_INTERVAL_S = 600.0
HTTP_HOST = "0.0.0.0"  # noqa: S104 - probes reach a pod on its own address
QUEUE_TYPES = ("classic", "quorum")
DATABASE_URL_ENV = "OUTBOX_RELAY_DATABASE_URL"
AMQP_URL_ENV = "OUTBOX_RELAY_AMQP_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"

P = ParamSpec("P")
AfterCommitHook = Callable[[Message], None]


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
    spec: QueueSpec
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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class ConsumerSettings:
    """How the runner connects and how much it runs at once; checked before connecting."""

    name: str
    schema: str = "public"
    database_url: str | None = None
    amqp_url: str = DEFAULT_AMQP_URL
    concurrency: int = CONCURRENCY
    prefetch_multiplier: int = PREFETCH_MULTIPLIER
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    inbox_retention_s: float = INBOX_RETENTION_S
    inbox_purge_interval_s: float = INBOX_PURGE_INTERVAL_S
    reconnect_max_s: float = 30.0
    dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S
    db_timeout_s: float = DB_TIMEOUT_S  # each SDK round trip: inbox insert, commit, rollback
    http_port: int = 0  # serve /healthz, /readyz and /metrics here; 0: no endpoints
    http_host: str = HTTP_HOST
    # /healthz fails once the database or the broker refused the configuration this long.
    unhealthy_after_s: float = UNHEALTHY_AFTER_S

    def __post_init__(self) -> None:
        try:
            validate_schema_name(self.schema)
        except ValueError as exc:
            raise ConfigurationError(f"schema: {exc}") from exc
        checks = [
            (bool(self.name.strip()), "name: give the consumer a name (it keys the inbox)"),
            (
                ":" not in self.name and "\x00" not in self.name,
                (
                    f"name: {self.name!r} contains ':' or NUL; the inbox keys rows "
                    "'<name>:<queue>' and the consumer grants match that prefix, so choose "
                    "a name without them"
                ),
            ),
            (self.concurrency >= 1, "concurrency must be at least 1"),
            (self.prefetch_multiplier >= 1, "prefetch_multiplier must be at least 1"),
            (self.shutdown_grace_s >= 0, "shutdown_grace must not be negative"),
            (self.inbox_retention_s > 0, "inbox_retention must be positive"),
            (self.inbox_purge_interval_s > 0, "inbox_purge_interval must be positive"),
            (0 <= self.http_port <= 65535, "http_port must be 0 (off) or a TCP port"),
            (self.unhealthy_after_s > 0, "unhealthy_after must be positive"),
            (self.amqp_url.startswith(("amqp://", "amqps://")), "amqp_url: expected amqp://..."),
            (
                usable_dead_peer_timeout(self.dead_peer_timeout_s),
                f"dead_peer_timeout {DEAD_PEER_TIMEOUT_RULE}",
            ),
            (usable_db_timeout(self.db_timeout_s), f"db_timeout {DB_TIMEOUT_RULE}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)

    @property
    def prefetch(self) -> int:
        return self.concurrency * self.prefetch_multiplier


@dataclass
class ConsumerApp:
    """A named set of handlers. ``name`` keys the inbox: keep it stable across deploys.

    URLs left out are taken from ``OUTBOX_RELAY_DATABASE_URL`` and ``OUTBOX_RELAY_AMQP_URL``
    when the app starts, not when it is created.
    """

    name: str
    schema: str = "public"
    database_url: str | None = None
    amqp_url: str | None = None
    concurrency: int = CONCURRENCY
    prefetch_multiplier: int = PREFETCH_MULTIPLIER
    shutdown_grace: float = SHUTDOWN_GRACE_S
    inbox_retention: float = INBOX_RETENTION_S
    handlers: list[Handler[...]] = field(default_factory=list)
    after_commit_hooks: list[AfterCommitHook] = field(default_factory=list)

    def handler(
        self,
        *,
        exchange: str,
        queue: str,
        bindings: Sequence[str] | str = ("#",),
        max_attempts: int = MAX_ATTEMPTS,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
        timeout: float = HANDLER_TIMEOUT_S,
        queue_type: str = "classic",
        name: str | None = None,
        declare_exchange: bool = True,
        max_priority: int | None = None,
        concurrency: int | None = None,
        retry_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
        park_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
        rate_limit: str | RateLimit | None = None,
        rate_limit_key: str | KeyFunction | None = None,
    ) -> Callable[[Callable[P, object]], Handler[P]]:
        """Register a handler for ``queue``; returns it as a :class:`Handler`.

        Its parameters say what it receives, by annotation or else by name (any order,
        each at most once): ``message`` (a :class:`Message`), ``tx`` (a
        ``psycopg.Connection``), a ``sqlalchemy.orm.Session``, and one payload parameter
        annotated with a pydantic model, dataclass, TypedDict or msgspec Struct, which
        receives the body validated as that type (a body that does not fit is parked at
        once). A handler that takes ``tx`` or a Session runs inside a database
        transaction that also records the message in the inbox: its effects happen
        exactly once. Without one there is no database and no deduplication.
        An ``async def`` handler works the same way with ``tx`` as a
        ``psycopg.AsyncConnection`` (the same transaction) or a
        ``sqlalchemy.ext.asyncio.AsyncSession``; it runs on its worker thread's event
        loop (see :mod:`outbox_relay.consumer.aio`), and is cancelled at its timeout.
        ``declare_exchange=False`` leaves the exchange alone (when a topology file manages
        it, e.g. with an alternate exchange); it must then exist before the app starts.
        ``max_priority`` (1-255, classic queues; RabbitMQ recommends at most 10) makes the
        queue a priority queue: messages published with a higher ``priority`` are handled
        first.

        ``concurrency`` gives the handler its own pool of that many worker threads (and
        database sessions) and its own prefetch (``concurrency x prefetch_multiplier``
        on its queue), so a slow handler cannot take the workers of the others; left
        out, the handler shares the app's pool of ``ConsumerApp.concurrency`` threads.
        ``retry_on`` (exception classes) retries only those and parks any other failure
        at once; ``park_on`` parks those at once, with the error. :class:`Retry`,
        :class:`Reject` and a payload that does not fit keep their meaning, ``park_on``
        wins over ``retry_on``, and a lost database connection always goes back to the
        queue without spending an attempt (see :mod:`outbox_relay.consumer.policy`).
        ``rate_limit`` (``"100/m"``, ``"N/s"``, ``"N/h"`` or ``RateLimit(max=, per=)``)
        holds for the handler across every process of the app, through the database
        (see :mod:`outbox_relay.consumer.gate`); ``rate_limit_key`` (``"header:NAME"``,
        ``"body:FIELD"`` or a function of the :class:`Message`) gives each key its own
        bucket of that size, messages without the key sharing one.
        """

        def register(func: Callable[P, object]) -> Handler[P]:
            label = name or str(getattr(func, "__qualname__", repr(func)))
            # String annotations resolve in the handler's module and in the scope that
            # defines it (a model declared in the same function).
            plan = plan_call(func, localns=sys._getframe(1).f_locals)
            validate = (
                validator_for(plan.payload_type, plan.payload_kind, where=f"handler {label}")
                if plan.payload_type is not None and plan.payload_kind is not None
                else None
            )
            limit, key = flow_settings(
                label, queue, rate_limit, rate_limit_key, payload_type=plan.payload_type
            )
            patterns = (bindings,) if isinstance(bindings, str) else tuple(bindings)
            try:
                policy = ErrorPolicy(
                    retry_on=exception_classes(retry_on, option="retry_on"),
                    park_on=exception_classes(park_on, option="park_on") or (),
                )
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"handler {label} (queue {queue!r}): {exc}") from exc
            delays = tuple(float(d) for d in retry_delays)
            handler = Handler(
                func=func,
                name=label,
                exchange=exchange,
                queue=queue,
                bindings=patterns,
                max_attempts=max_attempts,
                retry_delays_s=delays,
                timeout_s=float(timeout),
                queue_type=queue_type,
                declare_exchange=declare_exchange,
                spec=queue_spec(
                    queue=queue,
                    queue_type=queue_type,
                    exchange=exchange,
                    bindings=patterns,
                    retry_delays_s=delays,
                    max_attempts=max_attempts,
                    max_priority=max_priority,
                ),
                plan=plan,
                app_name=self.name,
                schema=self.schema,
                validate=validate,
                concurrency=concurrency,
                policy=policy,
                rate_limit=limit,
                rate_key=key,
            )
            check_handler(handler, taken=[h.queue for h in self.handlers])
            self.handlers.append(handler)
            return handler

        return register

    def after_commit(self, hook: AfterCommitHook) -> AfterCommitHook:
        """Register ``hook(message)``, called after a handler's transaction committed and
        before the delivery is acked (metrics, cache invalidation). Its errors are logged."""
        self.after_commit_hooks.append(hook)
        return hook

    def settings(self, **overrides: Any) -> ConsumerSettings:
        """The settings to run with: overrides, then this app's values, then the
        environment, then defaults. Raises ConfigurationError."""
        values: dict[str, Any] = {
            "name": self.name,
            "schema": self.schema,
            "database_url": self.database_url or os.environ.get(DATABASE_URL_ENV),
            "amqp_url": self.amqp_url or os.environ.get(AMQP_URL_ENV) or DEFAULT_AMQP_URL,
            "concurrency": self.concurrency,
            "prefetch_multiplier": self.prefetch_multiplier,
            "shutdown_grace_s": self.shutdown_grace,
            "inbox_retention_s": self.inbox_retention,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        settings = ConsumerSettings(**values)
        if not self.handlers:
            raise ConfigurationError(f"consumer app {self.name!r} has no handlers")
        needs_db = [h.name for h in self.handlers if h.uses_db]
        if needs_db and not settings.database_url:
            raise ConfigurationError(
                f"handlers {', '.join(needs_db)} take a transaction but no database URL is "
                f"set: pass database_url or set {DATABASE_URL_ENV}"
            )
        limited = [h.name for h in self.handlers if h.rate_limit is not None]
        if limited and not settings.database_url:
            raise ConfigurationError(
                f"handlers {', '.join(limited)} have a rate limit, which every process of the "
                f"app shares through the database, but no database URL is set: pass "
                f"database_url or set {DATABASE_URL_ENV}"
            )
        return settings

    def run(self, **overrides: Any) -> None:
        """Consume until SIGTERM or SIGINT, then drain and return.

        ``overrides`` are :class:`ConsumerSettings` fields, e.g. ``http_port=9102`` to
        serve ``/healthz``, ``/readyz`` and ``/metrics``.
        """
        from outbox_relay.consumer.serve import serve  # noqa: PLC0415 - pika only when running

        serve(self, self.settings(**overrides))


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
    for ok, message in checks:
        if not ok:
            raise ConfigurationError(f"{where}: {message}")
