"""Opening connections and translating psycopg's errors into ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from outbox_relay.dead_peer import DEAD_PEER_TIMEOUT_S, DeadPeerTimings
from outbox_relay.errors import (
    SchemaNotMigratedError,
    StoreError,
    StoreMisconfiguredError,
    StoreUnavailableError,
)
from outbox_relay.misconfiguration import database_misconfiguration
from outbox_relay.urls import redact_url, scrub

CONNECT_TIMEOUT_S = 5
# psycopg's default: a statement is prepared on the server at its sixth execution.
PREPARE_THRESHOLD = 5


def application_name_in(url: str) -> str | None:
    """The ``application_name`` the URL sets, if any; it names the relay's sessions in
    ``pg_stat_activity`` (and lets an operator end exactly those)."""
    try:
        name = conninfo_to_dict(url).get("application_name")
    except psycopg.Error:
        return None  # connect() reports the malformed URL
    return str(name) if name else None


def connect(
    url: str,
    *,
    autocommit: bool,
    application_name: str,
    dead_peer_timeout_s: float = DEAD_PEER_TIMEOUT_S,
    prepare: bool = False,
) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection with a connect timeout, TCP keepalives and TCP_USER_TIMEOUT (see
    :mod:`outbox_relay.dead_peer`); raises StoreUnavailableError.

    Server-side prepared statements only with ``prepare``: a connection pooler in
    transaction mode (see :mod:`outbox_relay.store.pooler`) runs each transaction on
    whichever server session is free, where psycopg's ``_pg3_0`` may already exist or
    be missing. Long-lived connections that repeat their statements ask for them, and
    turn them off again when :func:`~outbox_relay.store.pooler.pooling_mode` finds a
    pooler; the others (commands, probes) gain nothing from them.

    libpq quotes the parts of a connection string it cannot parse, so the error is
    scrubbed of the password before it goes anywhere.
    """
    try:
        with translate_errors(f"connecting to {redact_url(url)}"):
            return psycopg.Connection.connect(
                url,
                autocommit=autocommit,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=application_name,
                prepare_threshold=PREPARE_THRESHOLD if prepare else None,
                **dead_peer_parameters(url, dead_peer_timeout_s),
                **_text_encoding(url),
            )
    except StoreError as exc:
        message = scrub(str(exc), url)
        if message == str(exc):
            raise
        # Drop the chain too: the driver's own exception still quotes the password.
        raise type(exc)(message) from None


def _text_encoding(url: str) -> dict[str, Any]:
    """UTF-8 unless the URL names a client encoding: in a SQL_ASCII database the server
    converts nothing and would hand text back as bytes, which no outbox column may be."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:
        return {}  # connecting reports the malformed URL
    return {} if "client_encoding" in given else {"client_encoding": "UTF8"}


def dead_peer_parameters(url: str, timeout_s: float) -> dict[str, Any]:
    """libpq's keepalive parameters for ``timeout_s``, except those the URL sets itself."""
    timings = DeadPeerTimings.for_timeout(timeout_s)
    if timings is None:
        return {}
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:
        given = {}  # connecting reports the malformed URL
    return {key: value for key, value in timings.libpq_parameters().items() if key not in given}


# What server-side state left behind in, or missing from, a pooled server session looks
# like: these never mean the schema is missing.
_SESSION_MIXED_UP = (
    psycopg.errors.DuplicatePreparedStatement,  # prepared statement "_pg3_0" already exists
    psycopg.errors.InvalidSqlStatementName,  # prepared statement "_pg3_0" does not exist
)
_NOT_MIGRATED = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedFunction,
)


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """psycopg.OperationalError and friends become StoreUnavailableError, the rest StoreError;
    what no retry fixes (a refused login, a missing database, role or outbox table, TLS
    refused) becomes StoreMisconfiguredError, with its cause and fix."""
    try:
        yield
    except psycopg.errors.IdleInTransactionSessionTimeout as exc:
        # An InternalError by its SQLSTATE class, but the server has closed the session:
        # this relay sat in its claim longer than its lease (paused, stalled, frozen).
        raise StoreUnavailableError(
            f"database session ended while {action}: the claim's transaction stayed idle "
            "longer than the lease (idle_in_transaction_session_timeout); its rows are "
            "released and will be claimed again"
        ) from exc
    except _SESSION_MIXED_UP as exc:
        raise StoreError(
            f"database error while {action}: {first_line(exc)}: a connection pooler in "
            "transaction mode ran this statement on another client's server session. "
            "outbox-relay turns prepared statements off when it detects one at start; "
            "give it a direct or session-mode URL, or report how this pooler was set up"
        ) from exc
    except psycopg.Error as exc:
        wrong = database_misconfiguration(exc.sqlstate, str(exc))
        if wrong is not None:
            error = (
                SchemaNotMigratedError
                if isinstance(exc, _NOT_MIGRATED)
                else StoreMisconfiguredError
            )
            raise error(
                f"database refused while {action}: {wrong.cause} ({first_line(exc)}); {wrong.fix}"
            ) from exc
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            raise StoreUnavailableError(
                f"database unavailable while {action}: {first_line(exc)}"
            ) from exc
        raise StoreError(f"database error while {action}: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# SQLSTATEs that end the server session (the connection is gone even before libpq
# notices): connection exceptions (class 08), the server shutting down or the backend
# terminated (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now).
_SESSION_ENDED_PREFIX = "08"
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})
_CHAIN_LIMIT = 20  # exceptions chained deeper than this are not looked into


def connection_lost(conn: psycopg.Connection[Any] | None, exc: BaseException) -> str | None:
    """Why ``exc`` means ``conn`` is lost (a database restart, a failover, a killed
    backend, a cut network), or None when the connection is fine or ``exc`` is about
    something else (a constraint, a statement timeout, a bug).

    ``exc`` is what a handler raised while using ``conn`` (or an async view of it): a
    psycopg ``OperationalError`` or ``InterfaceError`` itself or anywhere in its chain
    (``raise ... from``, or SQLAlchemy's ``DBAPIError.orig``), and the connection is then
    closed or broken, or the error's SQLSTATE says the session ended.
    """
    error = _psycopg_cause(exc)
    if error is None:
        return None
    sqlstate = getattr(error, "sqlstate", None) or ""
    ended = sqlstate.startswith(_SESSION_ENDED_PREFIX) or sqlstate in _SESSION_ENDED
    if not (conn is None or conn.closed or conn.broken or ended):
        return None  # e.g. a statement timeout or a cancel: the session is still there
    return f"database connection lost in the handler: {type(error).__name__}: {first_line(error)}"


def _psycopg_cause(exc: BaseException) -> psycopg.Error | None:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < _CHAIN_LIMIT and current not in seen:
        if isinstance(current, (psycopg.OperationalError, psycopg.InterfaceError)):
            return current
        seen.append(current)
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError
        if isinstance(orig, BaseException):
            current = orig
            continue
        current = current.__cause__ or current.__context__
    return None
