"""The consumer's I/O: one pika connection used from one thread, feeding the worker pool.

The thread that calls :meth:`Runner.run` owns the connection. It consumes every
handler's queue on one channel, each with its own prefetch (its pool's size x prefetch
multiplier, set per consumer: quorum queues refuse a channel-wide limit), hands
deliveries to the handler's worker pool (:mod:`~outbox_relay.consumer.pools`) and
settles the workers' results (:mod:`~outbox_relay.consumer.settle`): ack, or republish
to a delay tier or the parking lot on a second, confirm-mode channel and then ack.
Workers never touch pika (:mod:`~outbox_relay.consumer.results`). Between events the
thread runs ``process_data_events`` every few hundred milliseconds, so heartbeats flow
however long a handler takes.

Undecodable messages: the connection decodes content headers through
:mod:`~outbox_relay.consumer.lenient_frames`, so properties pika cannot decode arrive as
a delivery with a problem (and their raw bytes) instead of dropping the connection; the
worker parks such a delivery with the reason, like any message it cannot decode. What is
republished is made to fit (:mod:`~outbox_relay.consumer.settle`).

Connection loss: every delivery carries the generation of the connection it came on;
results of an older generation are dropped (the broker has requeued those deliveries;
work that committed is recognised by the inbox on redelivery). The runner reconnects
with backoff, declares again and resumes.

Database outage: consuming pauses until the database answers
(:mod:`~outbox_relay.consumer.database`).

Misconfiguration (see :mod:`outbox_relay.misconfiguration`): at start a refusal no retry
fixes ends :meth:`Runner.run`; later it is retried, logged at a bounded rate and fails
:meth:`Runner.liveness` after ``unhealthy_after_s`` (:mod:`~outbox_relay.consumer.health`).
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties
from tenacity import RetryCallState

from outbox_relay.amqp_url import CONNECT_ERRORS, describe_amqp_error, unavailable
from outbox_relay.broker_nodes import BrokerNodes, NodeInUse
from outbox_relay.consumer import lenient_frames
from outbox_relay.consumer.app import ConsumerApp
from outbox_relay.consumer.database import (
    DatabaseWatch,
    flow_store,
    handler_sessions,
    start_inbox_purger,
)
from outbox_relay.consumer.declare import declare
from outbox_relay.consumer.gate import FlowGate
from outbox_relay.consumer.handler import Handler
from outbox_relay.consumer.health import Health
from outbox_relay.consumer.observer import ConsumerObserver, Unobserved
from outbox_relay.consumer.pools import WorkerPools, pool_sizes, prefetch_for
from outbox_relay.consumer.results import Results
from outbox_relay.consumer.settings import ConsumerSettings
from outbox_relay.consumer.settle import DeliveryToken, received, settle
from outbox_relay.consumer.worker import Job, Result
from outbox_relay.errors import BrokerUnavailableError, MisconfiguredError
from outbox_relay.reconnect import ReconnectBackoff, reconnecting
from outbox_relay.rpc_deadline import close_within
from outbox_relay.store.deadline import Deadlines
from outbox_relay.urls import redact_url

TICK_S = 0.2  # the longest the I/O thread goes without serving the connection

log = structlog.get_logger("outbox_relay.consumer")


class Runner:
    """Runs a :class:`ConsumerApp` until :meth:`stop`. :meth:`stop` is safe from any thread.

    ``share_pauses=False``: a :class:`~outbox_relay.consumer.errors.RateLimited` pause
    holds only in this process, and handlers without a limit never ask the database about
    pauses: the consumer as it was before pauses were shared, which the rate-limit
    benchmark measures the shared pauses against. Not for production: the other
    processes go on calling the service that asked to slow down."""

    def __init__(
        self,
        app: ConsumerApp,
        settings: ConsumerSettings,
        *,
        observer: ConsumerObserver | None = None,
        share_pauses: bool = True,
    ) -> None:
        self._app = app
        self._settings = settings
        self._handlers = list(app.handlers)
        self._observer: ConsumerObserver = observer or Unobserved()
        self._log = log.bind(consumer=settings.name)
        self._health = Health(
            unhealthy_after_s=settings.unhealthy_after_s, observer=self._observer, log=self._log
        )
        # Several nodes of a cluster: each connection tries them in turn (broker_nodes).
        # The node in use goes to the metric and to /readyz, as the relay's does.
        self._node = NodeInUse(on_change=self._observer.connected_to)
        self._nodes = BrokerNodes(
            settings.amqp_url,
            dead_peer_timeout_s=settings.dead_peer_timeout_s,
            on_node=self._node.connected_to,
        )
        self._ready = self._node.readiness(self._readiness)
        self._stopping = threading.Event()
        self._results = Results(connection=lambda: self._conn, on_wake=self._settle_ready)
        self._generation = 0
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._publisher: BlockingChannel | None = None
        self._frame_max = pika.spec.FRAME_MAX_SIZE
        self._cancelled_by_broker = False
        # Restarts from its base once connected again (see _connected).
        self._backoff = ReconnectBackoff(max_s=settings.reconnect_max_s)
        self._signalled: int | None = None
        self.ready = threading.Event()  # set while consuming
        self._tags: list[str] = []  # the consumers of the current channel
        self._started = False  # consumed once: a misconfiguration is retried from then on
        url = settings.database_url
        self._uses_db = any(h.uses_db for h in self._handlers)
        self._deadlines = Deadlines(
            timeout_s=settings.db_timeout_s, owner=f"consumer {settings.name}"
        )
        self._database = DatabaseWatch(
            settings,
            deadlines=self._deadlines,
            health=self._health,
            observer=self._observer,
            log=self._log,
        )
        self._pool = WorkerPools(
            self._handlers,
            concurrency=settings.concurrency,
            consumer=settings.name,
            new_session=(
                handler_sessions(url, settings, self._deadlines) if url and self._uses_db else None
            ),
            on_result=self._on_result,
            after_commit=app.after_commit_hooks,
        )
        # Rate limits and pauses (gate.py): deliveries wait there, unacked, for a token.
        self._gate = FlowGate(
            handlers=self._handlers,
            store=(
                flow_store(url, settings, self._deadlines)
                if url and any(h.uses_db or h.rate_limit for h in self._handlers)
                else None
            ),
            submit_to_pool=self._pool.submit,
            give_back=self._on_result,
            observer=self._observer,
            prefetch={h.queue: prefetch_for(h, settings) for h in self._handlers},
            share_pauses=share_pauses,
        )
        self._observer.watch_in_flight(lambda: self._pool.busy)

    @property
    def connections_opened(self) -> int:
        """How many broker connections this runner has opened (1 without an outage)."""
        return self._generation

    @property
    def deliveries_waited(self) -> int:
        """How many deliveries did not start as they arrived but waited in the flow gate:
        for a rate-limit token, for a pause to end, or for this process's view of the
        other processes' pauses to be refreshed (handlers without a limit)."""
        return self._gate.deliveries_waited

    def liveness(self) -> tuple[bool, str]:
        """Alive: the I/O loop went round recently (also while it waits out an outage),
        unless a service has refused the configuration for ``unhealthy_after_s``."""
        return self._health.liveness()

    def readiness(self) -> tuple[bool, str]:
        """Ready: connected to the broker and consuming every handler's queue, and the
        handlers' database (if any) answered the last time it was used; the details end
        with the broker node in use."""
        return self._ready()

    def _readiness(self) -> tuple[bool, str]:
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
        self._results.wake()

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
            if self._uses_db:
                self._database.check_at_start()
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

    def _start_purger(self) -> threading.Thread | None:
        url = self._settings.database_url
        if not url or not self._uses_db:
            return None
        return start_inbox_purger(
            url, self._settings, deadlines=self._deadlines, stopping=self._stopping, log=self._log
        )

    def _should_stop(self) -> bool:
        if self._signalled is not None and not self._stopping.is_set():
            self._log.info("consumer.stopping", signal=signal.Signals(self._signalled).name)
            self._stopping.set()
        return self._stopping.is_set()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._should_stop() and time.monotonic() < deadline:
            self._health.tick()
            self._stopping.wait(min(TICK_S, deadline - time.monotonic()))

    def _on_outage(self, state: RetryCallState) -> None:
        self._health.broker_down(state.outcome.exception() if state.outcome else None)

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
            self._tags = [] if self._database.paused else self._consume(channel)
            self._connected()
            while not self._should_stop() and not self._cancelled_by_broker:
                self._health.tick()
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
        self._backoff.connected()
        self._health.broker_up()

    # -- the database -------------------------------------------------------------------

    def _follow_database(self, channel: BlockingChannel) -> None:
        """Between events: cancel the consumers once deliveries are paused, and check the
        database with backoff while they are; consume again once it answers.

        A worker that gave a delivery back for the database starts nothing more (its
        pool is held) until what is queued behind that delivery has gone back after it,
        so that the queue redelivers them in their order."""
        if self._pool.held:
            self._settle_ready()  # the give-back, handed over before the hold: it pauses
        if not self._database.paused:
            if self._pool.held:  # its result was from a connection since lost
                self._give_back_unstarted(channel)
            return
        if self._tags:
            for tag in self._tags:
                channel.basic_cancel(tag)  # pika requeues what it has not dispatched
            self._tags = []
        self._give_back_unstarted(channel)  # and lets a held pool go on
        if self._database.answered():
            self._tags = self._consume(channel)

    def _give_back_unstarted(self, channel: BlockingChannel) -> int:
        """Requeue what waits in the gate or the pools, not started; how many."""
        jobs = [*self._gate.take_held(), *self._pool.take_unstarted()]
        current = [job for job in jobs if self._is_current(job)]
        for job in current:
            channel.basic_nack(job.token.tag, requeue=True)
        return len(current)

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
        # Waiting for a token or a pause: back to the queue at once, not waited out.
        returned = self._give_back_unstarted(channel)
        deadline = time.monotonic() + self._settings.shutdown_grace_s
        while self._pool.busy and time.monotonic() < deadline:
            self._health.tick()
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
        if self._stopping.is_set() or self._database.paused:
            channel.basic_nack(tag, requeue=True)  # paused: until the consumers are cancelled
            return
        self._gate.submit(received(handler, self._generation, method, properties, body))

    def _on_result(self, result: Result) -> None:
        """From a worker thread (see :class:`~outbox_relay.consumer.results.Results`)."""
        self._results.put(result)

    def _on_broker_cancel(self, _frame: Any) -> None:
        self._cancelled_by_broker = True

    def _settle_ready(self) -> None:
        self._results.woken()
        for result in self._pool.expire(time.monotonic()):
            self._settle(result)
        while (queued := self._results.take()) is not None:
            self._settle(queued)

    def _is_current(self, job: Job) -> bool:
        token: DeliveryToken = job.token
        return token.generation == self._generation and self._channel is not None

    def _settle(self, result: Result) -> None:
        current = self._is_current(result.job)
        settle(
            result,
            self._channel if current else None,
            self._publisher if current else None,
            frame_max=self._frame_max,
            database=self._database,
            gate=self._gate,
            observer=self._observer,
            log=self._log,
        )
