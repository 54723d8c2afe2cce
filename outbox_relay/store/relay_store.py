"""The relay's side of the outbox: leases, claim due rows, settle them, the wake-up flag.

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
LISTEN_PROBE_INTERVAL_S (with the heartbeat), so it cannot go silent unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import psycopg
import structlog
from psycopg import sql

from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_S
from outbox_relay.errors import StoreError, StoreUnavailableError
from outbox_relay.message import NO_PROPERTIES, OutboxRow
from outbox_relay.poll_ticker import POOLED_POLL_S, PollTicker
from outbox_relay.relay.outcome import Failure
from outbox_relay.relay.partitions import Leases, fair_share, surplus
from outbox_relay.relay.wakeup import SCHEDULED, Notices
from outbox_relay.store import lenient
from outbox_relay.store.connect import (
    application_name_in,
    connect,
    first_line,
    translate_errors,
)
from outbox_relay.store.deadline import DB_TIMEOUT_S, Deadlines, guarded
from outbox_relay.store.pooler import Pooling, announce_once, describe, pooling_mode
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
            "relay_pids": _int_array(()),
        }
        # A name given in the URL wins, so operators can tell relays apart.
        self._application_name = application_name_in(url) or application_name
        self._q = Queries("relay", schema=schema)
        self._leases = Queries("leases", schema=schema)
        self._work: psycopg.Connection[Any] | None = None
        # Work connections without an open claim; _work is one of them between batches.
        self._idle: list[psycopg.Connection[Any]] = []
        self._listen: psycopg.Connection[Any] | None = None
        self._pooling: Pooling | None = None
        self._ticker: PollTicker | None = None
        # Behind a transaction-mode pooler: the server session of each open claim.
        self._claim_pids: dict[int, int] = {}

    @property
    def schema(self) -> str:
        return self._schema

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
            self._listen.execute(self._leases["forget_stale_relays"])
        with self._on_work(self._work, "configuring the work connections"):
            if pooling.keeps_session:
                pids = [self._configure(conn, local=False) for conn in self._idle]
                self._claim_params["relay_pids"] = _int_array(pids)
            else:
                for conn in self._idle:
                    conn.prepare_threshold = None
            allowed = self._work.execute(self._q["can_see_all_sessions"]).fetchone()
            self._work.commit()
        if pooling is not Pooling.DIRECT:
            announce_once("relay", detected=describe(pooling), changes=self._pooling_changes())
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
        ids = {"relay_id": self.relay_id, "ttl_s": self._lease_ttl_s}
        with self._on_listen("renewing partition leases"):
            conn = self._require(self._listen)
            with self._lease_transaction(conn):
                row = conn.execute(
                    self._leases["heartbeat"],
                    {**ids, "hostname": socket.gethostname(), "pid": os.getpid()},
                ).fetchone()
                assert row is not None  # noqa: S101 - the statement always returns one row
                owned, live, partitions = list(row[0]), tuple(row[1]), int(row[2])
                share = fair_share(partitions, live, self.relay_id)
                extra = surplus(owned, share)
                if extra:
                    conn.execute(self._leases["release"], {**ids, "partitions": extra})
                    owned = [p for p in owned if p not in extra]
                elif len(owned) < share:
                    taken = conn.execute(
                        self._leases["acquire"], {**ids, "wanted": share - len(owned)}
                    ).fetchall()
                    owned += [r[0] for r in taken]
        self._claim_params["partitions"] = partitions
        self._probe_listener()
        return Leases(owned=tuple(sorted(owned)), live=live, partitions=partitions)

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
        with self._on_listen("releasing partition leases"), self._lease_transaction(conn):
            conn.execute(self._leases["release_all"], {"relay_id": self.relay_id})
            conn.execute(self._leases["unregister"], {"relay_id": self.relay_id})

    @contextlib.contextmanager
    def _lease_transaction(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """A transaction on the LISTEN connection that the server ends if the relay stops
        inside it for longer than the lease (see ``lease_transaction``)."""
        with conn.transaction():
            conn.execute(
                self._leases["lease_transaction"],
                {"timeout_ms": str(int(self._lease_ttl_s * 1000))},
            )
            yield

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

    def _pooling_changes(self) -> str:
        if self._pooling is None or self._pooling.keeps_session:
            return "nothing: session state lasts through this pooler"
        wake = (
            "LISTEN on --listen-database-url"
            if self._ticker is None
            else f"polling for new rows every {POOLED_POLL_S * 1000:.0f} ms instead of "
            "LISTEN (set --listen-database-url to a direct or session-mode URL to LISTEN)"
        )
        return (
            "no server-side prepared statements; the work settings are applied to each "
            f"claim's transaction (SET LOCAL); wake-ups: {wake}"
        )

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
        params = {**self._claim_params, "limit": limit, "max_bytes": max_bytes}
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
                    params["relay_pids"] = _int_array(tuple(self._claim_pids.values()))
                # Binary results: the payload comes as bytes rather than hex to decode.
                factory = _ClaimedRows()
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

    def drain_notifications(self) -> Notices:
        """Consume pending notifications; they are only hints: count them, and note
        whether one announced a delayed row."""
        conn = self._require(self._listen)
        if self._ticker is not None:
            # A tick: the relay claims after any wake-up; nothing was announced.
            self._ticker.drain()
            return Notices(0, scheduled=False)
        with translate_errors("reading notifications"):
            payloads = [n.payload for n in conn.notifies(timeout=0)]
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

    def _on_listen(self, action: str) -> contextlib.AbstractContextManager[None]:
        self._listen_asked_at = time.monotonic()
        conn = self._require(self._listen)
        return guarded(self._deadlines, conn, connection="LISTEN", action=action)

    def _require(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any]:
        if conn is None or conn.closed:
            raise StoreUnavailableError("not connected to the database")
        return conn


_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


class _ClaimedRows:
    """Row factory of the claim: empty headers come as NULL, and every row carries how
    many rows the claim locked, which it keeps (see claim_batch)."""

    def __init__(self) -> None:
        self.locked = 0

    def __call__(self, _cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], OutboxRow]:
        def make(values: Sequence[Any]) -> OutboxRow:
            row_id, message_id, exchange, routing_key, payload, content_type = values[:6]
            headers, partition_key, created_at, attempts, properties, self.locked = values[6:]
            return OutboxRow(
                row_id,
                message_id,
                exchange,
                routing_key,
                payload,
                content_type,
                _NO_HEADERS if headers is None else headers,
                partition_key,
                created_at,
                attempts,
                NO_PROPERTIES if properties is None else properties,
            )

        return make


class PostgresClaim:
    """Rows locked by one open claim transaction; ``settle`` or ``release`` ends it and
    hands its connection back (``on_end``)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        rows: list[OutboxRow],
        left_over: int,
        queries: Queries,
        on_end: Callable[[psycopg.Connection[Any]], None],
        *,
        deadlines: Deadlines,
    ) -> None:
        self._conn: psycopg.Connection[Any] | None = conn
        self._deadlines = deadlines
        self.rows = rows
        self.left_over = left_over
        self._q = queries
        self._on_end = on_end

    def settle(self, published: Sequence[int], failures: Sequence[Failure]) -> None:
        """Delete published rows, record failures, and commit the claim's transaction.

        A failure the database refuses to record as given (a value of that row out of
        range, say) is that row's problem: it never undoes the DELETE of the rows the
        broker confirmed, nor the other failures (see :meth:`_record`).
        """
        conn = self._end()
        # Not pipelined: a pipeline reports a session the server ended (e.g. after
        # idle_in_transaction_session_timeout) as a bare "server closed the connection",
        # losing the reason; the round trip saved is a fraction of a batch's time.
        try:
            with guarded(self._deadlines, conn, connection="work", action="settling outbox rows"):
                if published:
                    conn.execute(
                        self._q.encoded("delete_published", conn.info.encoding),
                        {"ids": _int_array(published)},
                    )
                if failures:
                    self._record(conn, failures)
                conn.commit()
        except BaseException:
            # Not handed back with the failed transaction still open (its locks held,
            # its DELETE waiting for the next claim's COMMIT): nothing of it happened.
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        finally:
            self._on_end(conn)

    def _record(self, conn: psycopg.Connection[Any], failures: Sequence[Failure]) -> None:
        """Record the failures in one statement, inside a savepoint. When the database
        refuses it for the data of a row, record them one by one, and mark a row whose
        own record is refused dead with the reason, so that it cannot come back to fail
        the same way; a row even that is refused for stays as it was (and is logged)."""
        if self._recorded(conn, failures) is None:
            return
        for failure in failures:
            refused = self._recorded(conn, [failure])
            if refused is None:
                continue
            error = _storable(
                f"{failure.error}; this failure could not be recorded as it was ({refused}), "
                "so the row is dead: `outbox-relay failed retry` sends it again"
            )
            try:
                with conn.transaction():
                    conn.execute(
                        self._q["record_failure_dead"], {"id": failure.row_id, "error": error}
                    )
            except _ROW_DATA_ERRORS as exc:
                log.error(  # noqa: TRY400 - the reason is logged; a traceback adds nothing
                    "relay.failure_not_recorded",
                    row_id=failure.row_id,
                    error=failure.error,
                    refused=first_line(exc),
                )

    def _recorded(self, conn: psycopg.Connection[Any], failures: Sequence[Failure]) -> str | None:
        """Record ``failures`` in one statement inside a savepoint; None when done, or
        why the database refused it for the data of a row (then nothing was recorded)."""
        try:
            with conn.transaction():
                conn.execute(self._q["record_failures"], _failure_parameters(failures))
        except _ROW_DATA_ERRORS as exc:
            return first_line(exc)
        return None

    def release(self) -> None:
        """End the claim changing nothing: every claimed row stays as it was. Ending an
        ended claim does nothing.

        A claim that found no rows ends with COMMIT, which costs no more: it took no lock
        and wrote nothing. psycopg forgets a connection's prepared statements on every
        ROLLBACK, so the claims after it would be planned again (an empty claim and its
        end took 1.2 ms instead of 0.38 ms). A claim that locked rows rolls back: its
        COMMIT would wait for the locks' WAL to reach the disk.
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.closed:
                with guarded(
                    self._deadlines, conn, connection="work", action="releasing claimed rows"
                ):
                    if self.rows:
                        conn.rollback()
                    else:
                        conn.commit()
        finally:
            self._on_end(conn)

    def _end(self) -> psycopg.Connection[Any]:
        conn, self._conn = self._conn, None
        if conn is None:
            raise StoreError("this claim was already settled or released")
        return conn


# What the database raises for a value it cannot store (out of range, NUL in text, a
# constraint): the data of one row, not an outage nor a bug of the statement.
_ROW_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


def _failure_parameters(failures: Sequence[Failure]) -> dict[str, Any]:
    return {
        "ids": [f.row_id for f in failures],
        "errors": [_storable(f.error) for f in failures],
        "delays": [f.retry_in_s for f in failures],
        "dead": [f.dead for f in failures],
    }


def _storable(text: str) -> str:
    """``text`` as PostgreSQL text can hold it: NUL and lone surrogates escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _int_array(values: Iterable[int]) -> str:
    """Integers as an array literal, for a parameter the statement casts: psycopg dumps a
    list element by element (6.6 ms for a batch's 4000 ids, against 0.9 ms this way)."""
    return "{" + ",".join(map(str, values)) + "}"


def _seconds(row: tuple[Any, ...] | None) -> float | None:
    return None if row is None or row[0] is None else max(0.0, float(row[0]))
