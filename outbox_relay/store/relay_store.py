"""The relay's side of the outbox: its connections, leases, claims, the wake-up flag.

Three connections: two for work (claim, publish and settle inside one transaction, so
claimed rows stay locked until settled; two so that the next batch can be claimed while
one is being published) and one that LISTENs for the producers' NOTIFY and carries this
relay's wake-up flag and its lease heartbeats. No claim is ever open on that one, so a
heartbeat cannot commit a claim.

Behind a connection pooler in transaction mode (see :mod:`outbox_relay.store.pooler`)
nothing may outlive a transaction: the work connections prepare no statements and apply
their settings to each claim's transaction; LISTEN goes to ``listen_url`` (a direct or
session-mode URL) when there is one, and otherwise a :class:`PollTicker` wakes the relay
every POOLED_POLL_S instead, which it says once at start and in ``wake_up``.

Every round trip on them has a deadline (:mod:`outbox_relay.store.deadline`): a
connection that stops answering is closed, and the error makes the relay reconnect. The
LISTEN connection, which otherwise only waits, is asked a question at least every
LISTEN_PROBE_INTERVAL_S (with the heartbeat), so it cannot go silent unnoticed. A
NOTIFY that arrives while such a question is on the wire is read with its answer, and the
socket will not signal it again: it is kept (:meth:`PostgresStore.notices_waiting`), and the
relay does not begin a sleep while one waits.

An open claim is a :class:`~outbox_relay.store.claim.PostgresClaim`; the lease
statements are :mod:`outbox_relay.store.leases`.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import psycopg
import structlog
from psycopg import sql

from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_S
from outbox_relay.errors import StoreError, StoreUnavailableError
from outbox_relay.poll_ticker import PollTicker
from outbox_relay.relay.partitions import Leases
from outbox_relay.relay.wakeup import SCHEDULED, Notices
from outbox_relay.store import lenient
from outbox_relay.store.claim import ClaimedRows, PostgresClaim, int_array
from outbox_relay.store.connect import application_name_in, connect, translate_errors
from outbox_relay.store.deadline import DB_TIMEOUT_S, Deadlines, guarded
from outbox_relay.store.leases import LeaseQueries
from outbox_relay.store.pooler import Pooling, announce_once, describe, pooling_mode, relay_changes
from outbox_relay.store.sqlfiles import Queries, notify_channel

ORDER_GATE_MAX_WAIT_S = 30.0
# Claims open at once: one being published, the next one claimed meanwhile.
WORK_CONNECTIONS = 2
# How long connect() waits for a NOTIFY sent through the database URL to reach the
# listen URL's session, which proves both reach the same database.
LISTEN_CHECK_TIMEOUT_S = 2.0
# The LISTEN connection answers a question at least this often (when the relay heartbeats).
LISTEN_PROBE_INTERVAL_S = 5.0

log = structlog.get_logger("outbox_relay.store")


class PostgresStore:
    """Claims and settles outbox rows of one schema. Heartbeats and lease changes run
    while no claim is open."""

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        relay_id: str,
        lease_ttl_s: float,
        order_gate: bool = False,
        order_gate_max_wait_s: float = ORDER_GATE_MAX_WAIT_S,
        application_name: str = "outbox-relay",
        dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S,
        listen_url: str | None = None,
        db_timeout_s: float = DB_TIMEOUT_S,
    ) -> None:
        self._url = url
        self._listen_url = listen_url
        self._dead_peer_timeout_s = dead_peer_timeout_s
        self._deadlines = Deadlines(timeout_s=db_timeout_s, owner="relay")
        self._listen_asked_at = 0.0  # monotonic; the LISTEN connection's last round trip
        self._schema = schema
        self.relay_id = relay_id
        self._lease_ttl_s = lease_ttl_s
        self._claim_params = {
            "relay_id": relay_id,
            "order_gate": order_gate,
            "order_gate_max_wait_s": order_gate_max_wait_s,
            # The partition count, known from the first heartbeat (which precedes claims).
            "partitions": 1,
            # This relay's work sessions, which the order gate does not wait for.
            "relay_pids": int_array(()),
        }
        # A name given in the URL wins, so operators can tell relays apart.
        self._application_name = application_name_in(url) or application_name
        self._q = Queries("relay", schema=schema)
        self._leases = LeaseQueries(schema=schema, relay_id=relay_id, lease_ttl_s=lease_ttl_s)
        self._work: psycopg.Connection[Any] | None = None
        # Work connections without an open claim; _work is one of them between batches.
        self._idle: list[psycopg.Connection[Any]] = []
        self._listen: psycopg.Connection[Any] | None = None
        # Payloads of the notifications read off the LISTEN connection and not drained:
        # by the wake-up, or by a heartbeat or flag change that read them with its answer.
        self._heard: deque[str] = deque()
        self._pooling: Pooling | None = None
        self._ticker: PollTicker | None = None
        # Behind a transaction-mode pooler: the server session of each open claim.
        self._claim_pids: dict[int, int] = {}

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def application_name(self) -> str:
        """The name this relay's sessions give PostgreSQL (one in the URL wins)."""
        return self._application_name

    def work_connections(self) -> tuple[psycopg.Connection[Any], ...]:
        """The work connections no claim holds now (every one between batches), for
        diagnostics and benchmarks; an open claim's is its ``connection``."""
        return tuple(self._idle)

    def listen_connection(self) -> psycopg.Connection[Any]:
        """The LISTEN connection, which carries heartbeats too; for diagnostics."""
        return self._require(self._listen)

    @property
    def wake_up(self) -> str | None:
        """How this relay learns of new rows, for /readyz; None before it connected."""
        if self._pooling is None:
            return None
        if self._ticker is not None:
            return (
                f"wake-up: polling every {self._ticker.interval_s * 1000:.0f} ms (LISTEN "
                "cannot work through a transaction-mode pooler; set --listen-database-url "
                "to a direct or session-mode URL for it)"
            )
        if self._listen_url is not None:
            return "wake-up: LISTEN on --listen-database-url"
        return "wake-up: LISTEN"

    def connect(self) -> None:
        """Open the connections and LISTEN (or start polling, see the module's doc);
        raises StoreUnavailableError, or StoreError for a setup that cannot work."""
        self.close()
        self._idle = [
            connect(
                self._url,
                autocommit=False,
                application_name=self._application_name,
                dead_peer_timeout_s=self._dead_peer_timeout_s,
                prepare=True,
            )
            for _ in range(WORK_CONNECTIONS)
        ]
        for conn in self._idle:
            lenient.configure(conn)
        self._work = self._idle[0]
        with self._on_work(self._work, "checking for a connection pooler"):
            pooling = pooling_mode(self._work, lambda: self._open(self._url, "probe"))
        self._pooling = pooling
        self._listen = self._open(self._listen_url or self._url, "listener")
        if self._listen_url is None and not pooling.keeps_session:
            self._ticker = PollTicker()
        else:
            self._start_listening()
        with self._on_listen("forgetting relays that are gone"):
            self._listen.execute(self._q["listener_forget_gone"])
            self._leases.forget_stale_relays(self._listen)
        with self._on_work(self._work, "configuring the work connections"):
            if pooling.keeps_session:
                pids = [self._configure(conn, local=False) for conn in self._idle]
                self._claim_params["relay_pids"] = int_array(pids)
            else:
                for conn in self._idle:
                    conn.prepare_threshold = None
            allowed = self._work.execute(self._q["can_see_all_sessions"]).fetchone()
            self._work.commit()
        if pooling is not Pooling.DIRECT:
            announce_once(
                "relay",
                detected=describe(pooling),
                changes=relay_changes(pooling, polling=self._ticker is not None),
            )
        if self._claim_params["order_gate"] and not (allowed and allowed[0]):
            raise StoreError(
                "--order-gate reads other sessions' transactions from pg_stat_activity, which "
                "this database role may not see: GRANT pg_read_all_stats TO <relay role>, "
                "or run without --order-gate"
            )

    # -- leases -------------------------------------------------------------------------

    def heartbeat(self) -> Leases:
        """Say this relay is alive, renew its leases, and take or hand back partitions
        until it holds its fair share. One short transaction, on the LISTEN connection:
        no claim is ever open there, so a heartbeat can neither commit nor roll back one,
        whenever it runs."""
        with self._on_listen("renewing partition leases"):
            leases = self._leases.heartbeat(self._require(self._listen))
        self._claim_params["partitions"] = leases.partitions
        self._probe_listener()
        return leases

    def _probe_listener(self) -> None:
        """A round trip on the LISTEN connection when it had none for
        LISTEN_PROBE_INTERVAL_S: while the relay only waits for its notifications, a
        silent connection would be noticed only at the next flag change."""
        if time.monotonic() - self._listen_asked_at < LISTEN_PROBE_INTERVAL_S:
            return
        self.next_due_in()

    def release_leases(self) -> None:
        """Hand every partition back and leave, so others take over at once (on the
        LISTEN connection, as the heartbeat)."""
        conn = self._listen
        if conn is None or conn.closed:
            return
        with self._on_listen("releasing partition leases"):
            self._leases.release_all(conn)

    def _open(self, url: str, role: str) -> psycopg.Connection[Any]:
        return connect(
            url,
            autocommit=True,
            application_name=f"{self._application_name} {role}",
            dead_peer_timeout_s=self._dead_peer_timeout_s,
        )

    def _start_listening(self) -> None:
        """LISTEN on the listen connection; one on its own URL must hear a NOTIFY sent
        through the database URL (the same database, not through a transaction pool)."""
        listen = self._require(self._listen)
        channel = sql.Identifier(notify_channel(self._schema))
        if self._listen_url is None:
            with self._on_listen(f"listening on schema {self._schema!r}"):
                listen.execute(sql.SQL("LISTEN {}").format(channel))
            return
        url = self._listen_url
        with self._on_listen("listening on --listen-database-url"):
            mode = pooling_mode(listen, lambda: self._open(url, "probe"))
            if not mode.keeps_session:
                raise StoreError(
                    "--listen-database-url goes through a connection pooler in transaction "
                    "mode, where LISTEN hears nothing: give it a direct URL to PostgreSQL "
                    "or a session-mode pool (PgBouncer: pool_mode = session)"
                )
            listen.execute(sql.SQL("LISTEN {}").format(channel))
            work = self._require(self._work)
            work.execute(sql.SQL("NOTIFY {}, 'connect'").format(channel))
            work.commit()
            if not list(listen.notifies(timeout=LISTEN_CHECK_TIMEOUT_S, stop_after=1)):
                raise StoreError(
                    f"--listen-database-url: a NOTIFY sent through --database-url did not "
                    f"arrive on it within {LISTEN_CHECK_TIMEOUT_S:.0f} s: point both at the "
                    "same database (the listen URL directly or through a session-mode pool)"
                )

    def _configure(self, conn: psycopg.Connection[Any], *, local: bool) -> int:
        """Apply the work settings to the session, or to the transaction just begun
        (``local``, left open); returns the server process of the session."""
        row = conn.execute(
            self._q["configure_work_session"],
            {"timeout_ms": str(int(self._lease_ttl_s * 1000)), "local": local},
        ).fetchone()
        if not local:
            conn.commit()
        assert row is not None  # noqa: S101 - the statement always returns one row
        return int(row[-1])

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.close()
            self._ticker = None
        self._claim_pids.clear()
        for conn in {id(c): c for c in (self._work, *self._idle, self._listen) if c}.values():
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._work = self._listen = None
        self._heard.clear()
        self._idle = []
        self._deadlines.close()

    # -- one batch: claim, then settle or release ----------------------------------------

    def claim(self, limit: int, max_bytes: int) -> PostgresClaim:
        """Lock up to ``limit`` due rows of this relay's partitions, in id order, in a
        transaction left open for the claim's ``settle`` or ``release``. Payloads stop
        at ``max_bytes`` (the first row always comes): the rows after that stay locked
        until the claim ends, and are counted as its ``left_over``.

        Up to WORK_CONNECTIONS claims may be open at once, each on a connection of its
        own; the rows of one are locked, so the next claim skips them.
        """
        if not self._idle:
            if self._work is None or self._work.closed:
                raise StoreUnavailableError("not connected to the database")
            raise StoreError(f"at most {WORK_CONNECTIONS} claims may be open at once")
        conn = self._idle.pop()
        params = self.claim_parameters(limit, max_bytes)
        # Not in pipeline mode, though it would save the BEGIN's round trip: a transaction
        # opened through a pipeline is not ended by idle_in_transaction_session_timeout
        # (seen on PostgreSQL 15 with psycopg 3.3), and that timeout is what frees the
        # partitions of a relay frozen inside its claim.
        try:
            with self._on_work(conn, "claiming outbox rows"):
                if not self._keeps_session():
                    pid = self._configure(conn, local=True)
                    self._claim_pids[id(conn)] = pid
                    # A copy: the claim ahead runs on another thread than the settles.
                    params["relay_pids"] = int_array(tuple(self._claim_pids.values()))
                # Binary results: the payload comes as bytes rather than hex to decode.
                factory = ClaimedRows()
                cursor = conn.cursor(binary=True, row_factory=factory)
                rows = cursor.execute(
                    self._q.encoded("claim_batch", conn.info.encoding), params
                ).fetchall()
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            self._claim_ended(conn)
            raise
        left_over = factory.locked - len(rows)
        return PostgresClaim(
            conn, rows, left_over, self._q, self._claim_ended, deadlines=self._deadlines
        )

    def claim_parameters(self, limit: int, max_bytes: int) -> dict[str, Any]:
        """The parameters of this relay's ``claim_batch`` statement (behind a
        transaction-mode pooler, ``claim`` adds its open claims' sessions)."""
        return {**self._claim_params, "limit": limit, "max_bytes": max_bytes}

    def _claim_ended(self, conn: psycopg.Connection[Any]) -> None:
        self._claim_pids.pop(id(conn), None)
        self._idle.append(conn)

    def _keeps_session(self) -> bool:
        return self._pooling is None or self._pooling.keeps_session

    # -- waking up ----------------------------------------------------------------------

    def set_waiting(self, waiting: bool) -> float | None:
        """Raise or lower this relay's wake-up flag; returns seconds until the next
        scheduled (delayed or retried) row, or None when there is none."""
        if self._ticker is not None:
            return self.next_due_in()  # no LISTEN, so no flag: producers need not notify
        conn = self._require(self._listen)
        with self._on_listen("setting the wake-up flag"):
            row = conn.execute(self._q["listener_set"], {"waiting": waiting}).fetchone()
        return _seconds(row)

    def next_due_in(self) -> float | None:
        """Seconds until the next scheduled (delayed or retried) row, None when none."""
        conn = self._require(self._listen)
        with self._on_listen("reading when the next scheduled row is due"):
            row = conn.execute(self._q["next_due"]).fetchone()
        return _seconds(row)

    def listen_fileno(self) -> int:
        if self._ticker is not None:
            return self._ticker.fileno()
        return self._require(self._listen).fileno()

    def notices_waiting(self) -> bool:
        """Whether notifications wait to be drained: on the socket, or read already with
        the answer of a heartbeat or a flag change (the socket does not signal those
        again, so a sleep must not wait for it)."""
        if self._heard:
            return True
        poller = select.poll()  # not select.select, which takes no descriptor past 1023
        poller.register(self.listen_fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def drain_notifications(self) -> Notices:
        """Consume pending notifications; they are only hints: count them, and note
        whether one announced a delayed row."""
        conn = self._require(self._listen)
        if self._ticker is not None:
            # A tick: the relay claims after any wake-up; nothing was announced.
            self._ticker.drain()
            return Notices(0, scheduled=False)
        with translate_errors("reading notifications"):
            self._heard.extend(n.payload for n in conn.notifies(timeout=0))
        payloads = [self._heard.popleft() for _ in range(len(self._heard))]
        return Notices(len(payloads), scheduled=SCHEDULED in payloads)

    def forget_waiting(self) -> None:
        """Remove this relay's flag at shutdown, so producers stop notifying for it."""
        if self._listen is None or self._listen.closed or self._ticker is not None:
            return
        with self._on_listen("removing the wake-up flag"):
            self._listen.execute(self._q["listener_remove"])

    def _on_work(
        self, conn: psycopg.Connection[Any], action: str
    ) -> contextlib.AbstractContextManager[None]:
        return guarded(self._deadlines, conn, connection="work", action=action)

    @contextlib.contextmanager
    def _on_listen(self, action: str) -> Iterator[None]:
        """A question on the LISTEN connection. Notifications read with its answer are
        kept in psycopg's backlog, which no socket signals: they move to ``_heard``."""
        self._listen_asked_at = time.monotonic()
        conn = self._require(self._listen)
        with guarded(self._deadlines, conn, connection="LISTEN", action=action):
            yield
            self._heard.extend(n.payload for n in conn.notifies(timeout=0))

    def _require(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any]:
        if conn is None or conn.closed:
            raise StoreUnavailableError("not connected to the database")
        return conn


def _seconds(row: tuple[Any, ...] | None) -> float | None:
    return None if row is None or row[0] is None else max(0.0, float(row[0]))
