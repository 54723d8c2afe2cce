"""The handlers' database as the runner sees it: the sessions and the flow store it opens,
the check at start, pausing deliveries through an outage, and the inbox purge.

Database outage: the first delivery a worker gives back because the database is
unavailable pauses consuming: the runner cancels its consumers and gives back what it
had not started, so messages wait in their queues instead of going round (no
redelivery storm, one log line), and :meth:`DatabaseWatch.answered` checks the database
with backoff until it answers; then the runner consumes again.
"""

from __future__ import annotations

import functools
import threading
import time

import structlog

from outbox_relay.consumer.health import Health
from outbox_relay.consumer.observer import ConsumerObserver
from outbox_relay.consumer.settings import ConsumerSettings
from outbox_relay.consumer.worker import SessionFactory
from outbox_relay.errors import StoreError, StoreMisconfiguredError, StoreUnavailableError
from outbox_relay.reconnect import ReconnectBackoff
from outbox_relay.store.deadline import Deadlines
from outbox_relay.store.flow import FlowStore
from outbox_relay.store.inbox import HandlerSession, check_inbox, purge_inbox


def handler_sessions(url: str, settings: ConsumerSettings, deadlines: Deadlines) -> SessionFactory:
    """What a worker calls for its database session (the inbox and the handler's ``tx``)."""
    return functools.partial(
        HandlerSession,
        url=url,
        schema=settings.schema,
        application_name=f"outbox-relay consumer {settings.name}",
        dead_peer_timeout_s=settings.dead_peer_timeout_s,
        deadlines=deadlines,
    )


def flow_store(url: str, settings: ConsumerSettings, deadlines: Deadlines) -> FlowStore:
    """The rate-limit tokens and pauses every process of the app shares."""
    return FlowStore(
        url=url,
        schema=settings.schema,
        application_name=f"outbox-relay consumer {settings.name} flow",
        deadlines=deadlines,
        dead_peer_timeout_s=settings.dead_peer_timeout_s,
    )


class DatabaseWatch:
    """Whether deliveries are paused for the database, and when to check it again. Used
    from the runner's I/O thread. ``url``: None without a database."""

    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        deadlines: Deadlines,
        health: Health,
        observer: ConsumerObserver,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._url = settings.database_url
        self._schema = settings.schema
        self._deadlines = deadlines
        self._health = health
        self._observer = observer
        self._log = log
        # Why deliveries are paused for the database (None: not paused), and when to check.
        self._paused: str | None = None
        self._paused_at = 0.0
        self._check_at = 0.0
        self._backoff = ReconnectBackoff(max_s=settings.reconnect_max_s)

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def check_at_start(self) -> None:
        """A database that refuses the configuration (a refused login, a missing database,
        role or inbox) raises StoreMisconfiguredError; one that is down pauses deliveries."""
        if not self._url:
            return
        try:
            check_inbox(self._url, schema=self._schema, deadlines=self._deadlines)
        except StoreMisconfiguredError:
            raise
        except StoreUnavailableError as exc:
            self.pause(str(exc))
            return
        self._observer.dependency("database", up=True, refused=False)

    def pause(self, reason: str) -> None:
        """Stop taking deliveries until the database answers (see :meth:`answered`)."""
        if self._paused is not None:
            return
        self._paused, self._paused_at = reason, time.monotonic()
        self._check_at = self._paused_at + self._backoff.next_wait_s()
        self._observer.dependency("database", up=False, refused=False)
        self._log.warning(
            "consumer.database_unavailable",
            error=reason,
            hint="consuming is paused: messages wait in their queues until the database "
            "answers again",
        )

    def answered(self) -> bool:
        """While paused: check the database once the backoff allows; True (and no longer
        paused) once it answers."""
        if time.monotonic() < self._check_at or not self._url:
            return False
        try:
            check_inbox(self._url, schema=self._schema, deadlines=self._deadlines)
        except StoreUnavailableError as exc:
            refused = isinstance(exc, StoreMisconfiguredError)
            if refused:
                self._health.refused("database", str(exc))
            self._observer.dependency("database", up=False, refused=refused)
            self._check_at = time.monotonic() + self._backoff.next_wait_s()
            return False
        self._backoff.connected()
        self._health.accepted("database")
        self._observer.dependency("database", up=True, refused=False)
        self._log.info(
            "consumer.database_recovered", paused_s=round(time.monotonic() - self._paused_at, 1)
        )
        self._paused = None
        return True


def start_inbox_purger(
    url: str,
    settings: ConsumerSettings,
    *,
    deadlines: Deadlines,
    stopping: threading.Event,
    log: structlog.typing.FilteringBoundLogger,
) -> threading.Thread:
    """A daemon thread that deletes inbox rows older than ``inbox_retention_s`` every
    ``inbox_purge_interval_s``, until ``stopping`` is set."""

    def purge_loop() -> None:
        while not stopping.wait(settings.inbox_purge_interval_s):
            try:
                deleted = purge_inbox(
                    url,
                    schema=settings.schema,
                    older_than_s=settings.inbox_retention_s,
                    deadlines=deadlines,
                )
            except StoreError as exc:
                log.warning("consumer.inbox_purge_failed", error=str(exc))
                continue
            log.info("consumer.inbox_purged", deleted=deleted)

    thread = threading.Thread(target=purge_loop, name="inbox-purger", daemon=True)
    thread.start()
    return thread
