"""The consumer's I/O: one pika connection used from one thread, feeding the worker pool.

The thread that calls :meth:`Runner.run` owns the connection. It consumes every
handler's queue on one channel, each with its own prefetch (its pool's size x prefetch
multiplier, set per consumer: quorum queues refuse a channel-wide limit), hands
deliveries to the handler's worker pool (:mod:`~outbox_relay.consumer.pools`) and
settles the workers' results: ack, or republish to a delay tier or the parking lot on a
second, confirm-mode channel and then ack. Workers never touch pika: they queue their
result and wake this thread with ``add_callback_threadsafe``, the one thread-safe call
of a pika connection. Between events the thread runs ``process_data_events`` every few
hundred milliseconds, so heartbeats flow however long a handler takes.

Undecodable messages: the connection decodes content headers through
:mod:`~outbox_relay.consumer.lenient_frames`, so properties pika cannot decode arrive as
a delivery with a problem (and their raw bytes) instead of dropping the connection; the
worker parks such a delivery with the reason, like any message it cannot decode. What is
republished is made to fit: header values AMQP cannot carry again travel as text, and
headers that would overflow the negotiated frame size are cut (see
:func:`~outbox_relay.consumer.failure.fit_headers`).

Connection loss: every delivery carries the generation of the connection it came on;
results of an older generation are dropped (the broker has requeued those deliveries;
work that committed is recognised by the inbox on redelivery). The runner reconnects
with backoff, declares again and resumes.

Database outage: the first delivery a worker gives back because the database is
unavailable pauses consuming: the runner cancels its consumers and gives back what it
had not started, so messages wait in their queues instead of going round (no
redelivery storm, one log line), and checks the database with backoff until it
answers; then it consumes again.

Misconfiguration (see :mod:`outbox_relay.misconfiguration`): at start a refusal no retry
fixes ends :meth:`Runner.run`; later it is retried, logged at a bounded rate and fails
:meth:`Runner.liveness` after ``unhealthy_after_s``.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties
from tenacity import RetryCallState

from outbox_relay.amqp_url import CONNECT_ERRORS, describe_amqp_error, unavailable
from outbox_relay.broker_nodes import BrokerNodes
from outbox_relay.consumer import lenient_frames
from outbox_relay.consumer.app import ConsumerApp
from outbox_relay.consumer.declare import declare
from outbox_relay.consumer.failure import (
    DROPPED_HEADERS_HEADER,
    destination,
    failure_headers,
    fit_headers,
)
from outbox_relay.consumer.gate import FlowGate
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.message import Delivery, original_exchange, original_routing_key
from outbox_relay.consumer.pools import WorkerPools, pool_sizes, prefetch_for
from outbox_relay.consumer.settings import ConsumerSettings
from outbox_relay.consumer.worker import Job, Kind, Result
from outbox_relay.errors import (
    BrokerUnavailableError,
    MisconfiguredError,
    StoreError,
    StoreMisconfiguredError,
    StoreUnavailableError,
)
from outbox_relay.misconfiguration import Refusals
from outbox_relay.reconnect import ReconnectBackoff, reconnecting
from outbox_relay.rpc_deadline import close_within
from outbox_relay.store.deadline import Deadlines
from outbox_relay.store.flow import FlowStore
from outbox_relay.store.inbox import HandlerSession, check_inbox, purge_inbox
from outbox_relay.urls import redact_url

TICK_S = 0.2  # the longest the I/O thread goes without serving the connection
LIVENESS_LIMIT_S = 30.0  # an I/O loop quiet for longer is stuck: /healthz fails
PERSISTENT = 2

log = structlog.get_logger("outbox_relay.consumer")


@dataclass(frozen=True)
class _Token:
    generation: int
    tag: int
    properties: BasicProperties


class ConsumerObserver(Protocol):
    """What the runner reports, from its I/O thread (e.g. to ConsumerMetrics)."""

    def watch_in_flight(self, running: Callable[[], int]) -> None: ...

    def settled(self, *, queue: str, handler: str, result: Result, settled_as: str) -> None: ...

    def outage(self) -> None: ...

    def dependency(self, service: str, *, up: bool, refused: bool) -> None: ...

    def connected_to(self, node: str) -> None: ...

    def token_waited(self, *, queue: str, handler: str, seconds: float) -> None: ...

    def paused_for(self, *, queue: str, handler: str, seconds: float) -> None: ...


class _Unobserved:
    def watch_in_flight(self, running: Callable[[], int]) -> None:
        pass

    def settled(self, *, queue: str, handler: str, result: Result, settled_as: str) -> None:
        pass

    def outage(self) -> None:
        pass

    def dependency(self, service: str, *, up: bool, refused: bool) -> None:
        pass

    def connected_to(self, node: str) -> None:
        pass

    def token_waited(self, *, queue: str, handler: str, seconds: float) -> None:
        pass

    def paused_for(self, *, queue: str, handler: str, seconds: float) -> None:
        pass


class Runner:
    """Runs a :class:`ConsumerApp` until :meth:`stop`. :meth:`stop` is safe from any thread."""

    def __init__(
        self,
        app: ConsumerApp,
        settings: ConsumerSettings,
        *,
        observer: ConsumerObserver | None = None,
    ) -> None:
        self._app = app
        self._settings = settings
        self._handlers = list(app.handlers)
        self._observer: ConsumerObserver = observer or _Unobserved()
        # Several nodes of a cluster: each connection tries them in turn (broker_nodes).
        self._nodes = BrokerNodes(
            settings.amqp_url,
            dead_peer_timeout_s=settings.dead_peer_timeout_s,
            on_node=self._observer.connected_to,
        )
        self._stopping = threading.Event()
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._generation = 0
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._publisher: BlockingChannel | None = None
        self._frame_max = pika.spec.FRAME_MAX_SIZE
        self._cancelled_by_broker = False
        self._outage = False
        # Restarts from its base once connected again (see _connected).
        self._backoff = ReconnectBackoff(max_s=settings.reconnect_max_s)
        self._signalled: int | None = None
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self.ready = threading.Event()  # set while consuming
        self._last_tick = time.monotonic()
        self._tags: list[str] = []  # the consumers of the current channel
        self._started = False  # consumed once: a misconfiguration is retried from then on
        self._refusals = Refusals(unhealthy_after_s=settings.unhealthy_after_s)
        # Why deliveries are paused for the database (None: not paused), and when to check.
        self._paused: str | None = None
        self._paused_at = 0.0
        self._check_at = 0.0
        self._db_backoff = ReconnectBackoff(max_s=settings.reconnect_max_s)
        url = settings.database_url
        self._deadlines = Deadlines(
            timeout_s=settings.db_timeout_s, owner=f"consumer {settings.name}"
        )
        self._pool = WorkerPools(
            self._handlers,
            concurrency=settings.concurrency,
            consumer=settings.name,
            new_session=(
                functools.partial(
                    HandlerSession,
                    url=url,
                    schema=settings.schema,
                    application_name=f"outbox-relay consumer {settings.name}",
                    dead_peer_timeout_s=settings.dead_peer_timeout_s,
                    deadlines=self._deadlines,
                )
                if url and any(h.uses_db for h in self._handlers)
                else None
            ),
            on_result=self._on_result,
            after_commit=app.after_commit_hooks,
        )
        # Rate limits and pauses (gate.py): deliveries wait there, unacked, for a token.
        self._gate = FlowGate(
            handlers=self._handlers,
            store=(
                FlowStore(
                    url=url,
                    schema=settings.schema,
                    application_name=f"outbox-relay consumer {settings.name} flow",
                    deadlines=self._deadlines,
                    dead_peer_timeout_s=settings.dead_peer_timeout_s,
                )
                if url and any(h.uses_db or h.rate_limit for h in self._handlers)
                else None
            ),
            submit_to_pool=self._pool.submit,
            give_back=self._on_result,
            observer=self._observer,
            prefetch=settings.prefetch,
        )
        self._log = log.bind(consumer=settings.name)
        self._observer.watch_in_flight(lambda: self._pool.busy)

    @property
    def connections_opened(self) -> int:
        """How many broker connections this runner has opened (1 without an outage)."""
        return self._generation

    def liveness(self) -> tuple[bool, str]:
        """Alive: the I/O loop went round recently (also while it waits out an outage),
        unless a service has refused the configuration for ``unhealthy_after_s``."""
        refused = self._refusals.unhealthy()
        if refused is not None:
            return False, refused
        idle_s = time.monotonic() - self._last_tick
        if idle_s <= LIVENESS_LIMIT_S:
            return True, f"I/O loop ran {idle_s:.1f}s ago"
        return False, f"the I/O loop has not run for {idle_s:.0f}s"

    def readiness(self) -> tuple[bool, str]:
        """Ready: connected to the broker and consuming every handler's queue, and the
        handlers' database (if any) answered the last time it was used."""
        if not self.ready.is_set():
            return False, "not consuming: connecting to the broker or stopping"
        problem = self._pool.database_problem
        if problem is not None:
            return False, f"deliveries go back to the queue: {problem}"
        flow = self._gate.describe()
        return True, (
            f"consuming {len(self._handlers)} queues, {self._pool.busy} handlers running"
            + (f", {self._gate.held} waiting for a token or a pause; {flow}" if flow else "")
        )

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop consuming, drain in-flight handlers within the grace period, return."""
        self._stopping.set()
        self._wake()

    def run_until_signalled(self) -> None:
        """:meth:`run`, stopping on SIGTERM or SIGINT. Call from the main thread."""

        def on_signal(signum: int, _frame: object) -> None:
            # Only note it: this thread may hold a lock right now (pika's, the log
            # writer's, the stop event's), and taking it again here would deadlock.
            self._signalled = signum

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.run()

    def run(self) -> None:
        """Consume until :meth:`stop`, reconnecting with backoff through broker outages.

        Raises TopologyError when the broker refuses a declaration (a queue exists with
        other arguments): reconnecting cannot fix that.
        """
        self._pool.start()
        purger = self._start_purger()
        self._log.info(
            "consumer.starting",
            broker=redact_url(self._settings.amqp_url),
            queues=[h.queue for h in self._handlers],
            concurrency=pool_sizes(self._handlers, self._settings),
            prefetch={h.queue: prefetch_for(h, self._settings) for h in self._handlers},
        )
        retrying = reconnecting(
            unavailable=(BrokerUnavailableError,),
            should_stop=self._should_stop,
            sleep=self._sleep,
            on_outage=self._on_outage,
            backoff=self._backoff,
            reraise=True,
            # At start, a refusal no retry fixes ends the run (the CLI exits 3).
            fatal=lambda error: isinstance(error, MisconfiguredError) and not self._started,
        )
        try:
            self._gate.check()  # a rate limit without its table ends the run (exit 3)
            self._gate.start()
            self._check_database()
            for attempt in retrying:
                with attempt:
                    self._serve()
        except BrokerUnavailableError:
            if not self._stopping.is_set():
                raise
        finally:
            self._stopping.set()
            # In-flight handlers had their grace period in _drain (or cannot be acked: the
            # connection is gone). Workers are daemon threads; the broker redelivers.
            self._pool.stop(0.0)
            self._gate.stop()
            if purger is not None:
                purger.join(5)
            self._deadlines.close()
            self._log.info("consumer.stopped")

    def _should_stop(self) -> bool:
        if self._signalled is not None and not self._stopping.is_set():
            self._log.info("consumer.stopping", signal=signal.Signals(self._signalled).name)
            self._stopping.set()
        return self._stopping.is_set()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._should_stop() and time.monotonic() < deadline:
            self._last_tick = time.monotonic()
            self._stopping.wait(min(TICK_S, deadline - time.monotonic()))

    def _on_outage(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        refused = isinstance(error, MisconfiguredError)
        self._observer.dependency("broker", up=False, refused=refused)
        if refused:
            self._refused("broker", str(error))
        if not self._outage:
            self._outage = True
            self._observer.outage()
            if not refused:
                self._log.warning("consumer.broker_unavailable", error=str(error))

    def _refused(self, service: str, error: str) -> None:
        """Loud, at a bounded rate: the next try may succeed once someone fixes it."""
        report = self._refusals.refused(service, error)
        if report.log:
            self._log.error(
                "consumer.dependency_refused",
                service=service,
                error=error,
                refused_for_s=round(report.for_s, 1),
                tries=report.tries,
                retrying=True,
            )

    # -- one connection -----------------------------------------------------------------

    def _serve(self) -> None:
        # Declared again after every reconnect: the broker may have restarted empty.
        report = declare(self._nodes.ordered_url(), self._handlers)  # the next node first
        if not report.up_to_date:
            self._log.info("consumer.declared", created=[i.label() for i in report.created])
        try:
            conn = self._nodes.open(
                lambda node: pika.BlockingConnection(node.params), errors=CONNECT_ERRORS
            )
            lenient_frames.install(conn)  # before any delivery can arrive
            self._frame_max = lenient_frames.negotiated_frame_max(conn)
            self._generation += 1
            self._conn, self._cancelled_by_broker = conn, False
            channel = conn.channel()
            publisher = conn.channel()
            publisher.confirm_delivery()
            self._channel, self._publisher = channel, publisher
            channel.add_on_cancel_callback(self._on_broker_cancel)
            self._tags = [] if self._paused else self._consume(channel)
            self._connected()
            while not self._should_stop() and not self._cancelled_by_broker:
                self._last_tick = time.monotonic()
                conn.process_data_events(time_limit=TICK_S)
                self._settle_ready()
                self._follow_database(channel)
            if self._cancelled_by_broker:
                raise BrokerUnavailableError("the broker cancelled the consumer (queue deleted?)")
            self._drain(conn, channel, self._tags)
        except CONNECT_ERRORS as exc:
            raise unavailable(
                f"lost the connection to {self._nodes.redacted}: {describe_amqp_error(exc)}",
                exc,
            ) from exc
        finally:
            self._discard_connection()

    def _consume(self, channel: BlockingChannel) -> list[str]:
        tags = []
        for handler in self._handlers:
            # Per consumer (global=False), for the consumers started after it: each queue
            # gets its own pool's prefetch; quorum queues refuse a channel-wide limit.
            channel.basic_qos(prefetch_count=prefetch_for(handler, self._settings))
            tags.append(
                channel.basic_consume(handler.queue, functools.partial(self._on_delivery, handler))
            )
        return tags

    def _connected(self) -> None:
        self.ready.set()
        self._started = True
        self._observer.dependency("broker", up=True, refused=False)
        if self._refusals.accepted("broker"):
            self._log.info("consumer.dependency_accepted", service="broker")
        self._backoff.connected()
        if self._outage:
            self._outage = False
            self._log.info("consumer.broker_reconnected")
        else:
            self._log.info("consumer.consuming")

    # -- the database -------------------------------------------------------------------

    def _check_database(self) -> None:
        """At start: a database that refuses the configuration (a refused login, a missing
        database, role or inbox) ends the run; one that is down pauses deliveries."""
        url = self._settings.database_url
        if not url or not any(h.uses_db for h in self._handlers):
            return
        try:
            check_inbox(url, schema=self._settings.schema, deadlines=self._deadlines)
        except StoreMisconfiguredError:
            raise
        except StoreUnavailableError as exc:
            self._pause(str(exc))
            return
        self._observer.dependency("database", up=True, refused=False)

    def _pause(self, reason: str) -> None:
        """Stop taking deliveries until the database answers (see :meth:`_follow_database`)."""
        if self._paused is not None:
            return
        self._paused, self._paused_at = reason, time.monotonic()
        self._check_at = self._paused_at + self._db_backoff.next_wait_s()
        self._observer.dependency("database", up=False, refused=False)
        self._log.warning(
            "consumer.database_unavailable",
            error=reason,
            hint="consuming is paused: messages wait in their queues until the database "
            "answers again",
        )

    def _follow_database(self, channel: BlockingChannel) -> None:
        """Between events: cancel the consumers once deliveries are paused, and check the
        database with backoff while they are; consume again once it answers."""
        if self._paused is None:
            return
        if self._tags:
            for tag in self._tags:
                channel.basic_cancel(tag)  # pika requeues what it has not dispatched
            self._tags = []
            for job in [*self._gate.take_held(), *self._pool.take_unstarted()]:
                if self._is_current(job):
                    channel.basic_nack(job.token.tag, requeue=True)
        url = self._settings.database_url
        if time.monotonic() < self._check_at or not url:
            return
        try:
            check_inbox(url, schema=self._settings.schema, deadlines=self._deadlines)
        except StoreUnavailableError as exc:
            refused = isinstance(exc, StoreMisconfiguredError)
            if refused:
                self._refused("database", str(exc))
            self._observer.dependency("database", up=False, refused=refused)
            self._check_at = time.monotonic() + self._db_backoff.next_wait_s()
            return
        self._db_backoff.connected()
        self._refusals.accepted("database")
        self._observer.dependency("database", up=True, refused=False)
        self._log.info(
            "consumer.database_recovered", paused_s=round(time.monotonic() - self._paused_at, 1)
        )
        self._paused = None
        self._tags = self._consume(channel)

    def _discard_connection(self) -> None:
        self.ready.clear()
        conn, self._conn, self._channel, self._publisher = self._conn, None, None, None
        self._gate.take_held()  # their channel is gone: the broker requeues them
        self._pool.take_unstarted()
        if conn is not None:
            # Within CLOSE_TIMEOUT_S: a broker gone silent never answers the close.
            close_within(conn)

    def _drain(
        self, conn: pika.BlockingConnection, channel: BlockingChannel, tags: list[str]
    ) -> None:
        """Stop consuming, give back unstarted deliveries, let in-flight handlers finish."""
        for tag in tags:
            channel.basic_cancel(tag)  # pika nacks (requeues) what it has not dispatched
        returned = 0
        # Waiting for a token or a pause: back to the queue at once, not waited out.
        for job in [*self._gate.take_held(), *self._pool.take_unstarted()]:
            if self._is_current(job):
                channel.basic_nack(job.token.tag, requeue=True)
                returned += 1
        deadline = time.monotonic() + self._settings.shutdown_grace_s
        while self._pool.busy and time.monotonic() < deadline:
            self._last_tick = time.monotonic()
            conn.process_data_events(time_limit=TICK_S)
            self._settle_ready()
        self._settle_ready()
        self._log.info("consumer.drained", returned=returned, still_running=self._pool.busy)

    # -- deliveries in, results out -----------------------------------------------------

    def _on_delivery(
        self,
        handler: Handler[...],
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        if self._stopping.is_set() or self._paused is not None:
            channel.basic_nack(tag, requeue=True)  # paused: until the consumers are cancelled
            return
        undecodable = lenient_frames.undecodable(properties)
        delivery = Delivery.received(
            body=body,
            exchange=method.exchange,
            routing_key=method.routing_key,
            redelivered=bool(method.redelivered),
            queue=handler.queue,
            message_id=properties.message_id,
            content_type=properties.content_type,
            headers=properties.headers,
            timestamp=properties.timestamp,
            undecodable=undecodable.reason() if undecodable else None,
            raw_properties=undecodable.raw if undecodable else None,
        )
        self._gate.submit(Job(delivery, handler, _Token(self._generation, tag, properties)))

    def _on_result(self, result: Result) -> None:
        """From a worker thread: queue the result and wake the I/O thread, unless a wake-up
        is already on its way (one wake-up settles every result queued by then)."""
        self._results.put(result)
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake()

    def _wake(self) -> None:
        conn = self._conn
        if conn is None:
            return
        # Closed meanwhile: the loop settles what is queued when it runs again.
        with contextlib.suppress(pika.exceptions.AMQPError, OSError, RuntimeError):
            conn.add_callback_threadsafe(self._settle_ready)

    def _on_broker_cancel(self, _frame: Any) -> None:
        self._cancelled_by_broker = True

    def _settle_ready(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        now = time.monotonic()
        for result in self._pool.expire(now):
            self._settle(result)
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return
            self._settle(result)

    def _is_current(self, job: Job) -> bool:
        token: _Token = job.token
        return token.generation == self._generation and self._channel is not None

    def _settle(self, result: Result) -> None:
        job = result.job
        token: _Token = job.token
        channel = self._channel
        fields = {
            "queue": job.handler.queue,
            "message_id": job.delivery.message_id,
            "attempt": result.attempt,
            "duration_ms": round(result.duration_s * 1000, 2),
        }
        if channel is None or not self._is_current(job):
            self._log.info("consumer.result_dropped", reason="connection replaced", **fields)
            return
        outcome = result.kind.value
        error_fields = {}
        if result.error is not None:
            error_fields = {"error_type": result.error.type, "error": result.error.message}
        if result.kind in (Kind.HANDLED, Kind.DUPLICATE):
            channel.basic_ack(token.tag)
        elif result.kind is Kind.REQUEUE:  # the database was unavailable
            channel.basic_nack(token.tag, requeue=True)
            self._pause(result.error.message if result.error else "database unavailable")
        elif result.kind is Kind.PAUSED:  # RateLimited: held, unacked, until the pause ends
            again = Job(job.delivery, job.handler, job.token)
            self._gate.pause(job.handler, result.requested_delay_s or 0.0, again=again)
        elif result.kind is Kind.BUSY:  # the database answers: nothing to pause
            channel.basic_nack(token.tag, requeue=True)
            outcome = Kind.REQUEUE.value
        else:
            outcome = self._republish(result, token)
            if outcome == Kind.REQUEUE.value:
                channel.basic_nack(token.tag, requeue=True)
            else:
                channel.basic_ack(token.tag)
        self._observer.settled(
            queue=job.handler.queue, handler=job.handler.name, result=result, settled_as=outcome
        )
        level = self._log.info if result.error is None else self._log.warning
        level("consumer.message", outcome=outcome, **fields, **error_fields)

    def _republish(self, result: Result, token: _Token) -> str:
        """Publish a failed message to its next queue with confirms; the outcome's name."""
        job, error = result.job, result.error
        assert error is not None  # noqa: S101 - failures always carry their error
        assert self._publisher is not None  # noqa: S101 - set while connected
        target = destination(
            job.handler.route,
            attempt=result.attempt,
            reject=result.kind is Kind.PARK,
            requested_delay_s=result.requested_delay_s,
        )
        headers = failure_headers(
            job.delivery.headers,
            attempt=result.attempt,
            error=error,
            failed_queue=job.handler.queue,
            routing_key=original_routing_key(job.delivery),
            exchange=original_exchange(job.delivery),
            raw_properties=job.delivery.raw_properties,
        )
        try:
            self._publisher.basic_publish(
                "",
                target.queue,
                job.delivery.body,
                properties=fitted(token.properties, headers, frame_max=self._frame_max),
                mandatory=True,
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            self._log.error(
                "consumer.republish_refused",
                queue=job.handler.queue,
                target=target.queue,
                message_id=job.delivery.message_id,
                error=repr(exc),
            )
            return Kind.REQUEUE.value
        return Kind.PARK.value if target.parked else Kind.RETRY.value

    # -- inbox maintenance --------------------------------------------------------------

    def _start_purger(self) -> threading.Thread | None:
        url = self._settings.database_url
        if not url or not any(h.uses_db for h in self._handlers):
            return None
        thread = threading.Thread(
            target=self._purge_loop, args=(url,), name="inbox-purger", daemon=True
        )
        thread.start()
        return thread

    def _purge_loop(self, url: str) -> None:
        while not self._stopping.wait(self._settings.inbox_purge_interval_s):
            try:
                deleted = purge_inbox(
                    url,
                    schema=self._settings.schema,
                    older_than_s=self._settings.inbox_retention_s,
                    deadlines=self._deadlines,
                )
            except StoreError as exc:
                self._log.warning("consumer.inbox_purge_failed", error=str(exc))
                continue
            self._log.info("consumer.inbox_purged", deleted=deleted)


def fitted(
    original: BasicProperties, headers: dict[str, Any], *, frame_max: int
) -> BasicProperties:
    """:func:`republished`, its headers cut to fit one content-header frame of
    ``frame_max`` bytes (a larger one makes the broker close the connection)."""

    def size_of(candidate: dict[str, Any]) -> int:
        return len(b"".join(republished(original, candidate).encode()))  # type: ignore[no-untyped-call]

    limit = frame_max - lenient_frames.FRAME_OVERHEAD
    try:
        return republished(original, fit_headers(headers, size_of=size_of, limit=limit))
    except (struct.error, pika.exceptions.AMQPError, TypeError, ValueError):
        # A value failure_headers did not make encodable: keep only our own headers.
        ours = {k: v for k, v in headers.items() if isinstance(k, str) and k.startswith("outbox-")}
        ours[DROPPED_HEADERS_HEADER] = [str(k) for k in headers if k not in ours]
        return republished(original, fit_headers(ours, size_of=size_of, limit=limit))


def republished(original: BasicProperties, headers: dict[str, Any]) -> BasicProperties:
    """The original properties with our headers. ``expiration`` is dropped (it would fight
    the tier's TTL) and ``user_id`` too (the broker checks it against our login)."""
    return BasicProperties(  # type: ignore[no-untyped-call]  # pika leaves __init__ untyped
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=PERSISTENT,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        type=original.type,
        app_id=original.app_id,
    )
