"""The application object: handlers registered with a decorator, and how to run them.

``ConsumerApp`` only collects configuration; nothing connects and nothing reads the
environment until :meth:`ConsumerApp.run` (or ``outbox-relay consume``) starts a
:class:`~outbox_relay.consumer.runner.Runner`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec

from outbox_relay.consumer.handler import Handler, check_handler
from outbox_relay.consumer.message import Message
from outbox_relay.consumer.payload import validator_for
from outbox_relay.consumer.policy import ErrorPolicy, exception_classes
from outbox_relay.consumer.rate_limit import KeyFunction, RateLimit, flow_settings
from outbox_relay.consumer.settings import (
    CONCURRENCY,
    DEFAULT_AMQP_URL,
    INBOX_RETENTION_S,
    PREFETCH_MULTIPLIER,
    SHUTDOWN_GRACE_S,
    ConsumerSettings,
    settings_field,
)
from outbox_relay.consumer.signature import plan_call
from outbox_relay.errors import ConfigurationError

MAX_ATTEMPTS = 5
RETRY_DELAYS_S = (1.0, 10.0, 60.0)
HANDLER_TIMEOUT_S = 30.0
DATABASE_URL_ENV = "OUTBOX_RELAY_DATABASE_URL"
AMQP_URL_ENV = "OUTBOX_RELAY_AMQP_URL"

P = ParamSpec("P")
AfterCommitHook = Callable[[Message], None]

__all__ = ["AfterCommitHook", "ConsumerApp", "ConsumerSettings", "Handler"]


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
                plan=plan,
                app_name=self.name,
                schema=self.schema,
                validate=validate,
                concurrency=concurrency,
                policy=policy,
                rate_limit=limit,
                rate_key=key,
                max_priority=max_priority,
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
        values.update(
            {settings_field(key): value for key, value in overrides.items() if value is not None}
        )
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
        serve ``/healthz``, ``/readyz`` and ``/metrics``; a duration may also be named as
        the app's argument is (``shutdown_grace=5`` for ``shutdown_grace_s=5``).
        """
        from outbox_relay.consumer.serve import serve  # noqa: PLC0415 - pika only when running

        serve(self, self.settings(**overrides))
