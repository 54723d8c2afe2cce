"""Telling a handler's lost database connection from the handler's own failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from outbox_relay.store.connect import connection_lost


@dataclass
class Conn:
    """What connection_lost reads of a psycopg connection."""

    closed: bool = False
    broken: bool = False


class DBAPIError(Exception):
    """Like SQLAlchemy's: the driver's error in ``.orig``."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(str(orig))
        self.orig = orig


def chained(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause  # what `raise outer from cause` does
    return outer


OPERATIONAL = psycopg.OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize(
    ("conn", "exc", "lost"),
    [
        (Conn(broken=True, closed=True), OPERATIONAL, True),
        (Conn(closed=True), psycopg.InterfaceError("the connection is closed"), True),
        # The server said the session ended, before libpq marked the connection bad.
        (Conn(), psycopg.errors.AdminShutdown("terminating connection"), True),
        (Conn(), psycopg.errors.ConnectionFailure("connection failure"), True),
        # Chained or wrapped (SQLAlchemy), the driver's error is found.
        (Conn(broken=True, closed=True), DBAPIError(OPERATIONAL), True),
        (Conn(broken=True, closed=True), chained(RuntimeError("x"), OPERATIONAL), True),
        # The connection is fine: a statement timeout, a cancel, a constraint, a bug.
        (Conn(), psycopg.errors.QueryCanceled("canceling statement"), False),
        (Conn(), OPERATIONAL, False),
        (Conn(broken=True, closed=True), psycopg.errors.UniqueViolation("dup"), False),
        (Conn(broken=True, closed=True), ValueError("not the database"), False),
    ],
)
def test_only_a_gone_connection_counts_as_lost(conn: Conn, exc: BaseException, lost: bool) -> None:
    reason = connection_lost(conn, exc)  # type: ignore[arg-type]  # duck-typed stand-in
    assert (reason is not None) is lost
    if reason is not None:
        assert reason.startswith("database connection lost in the handler: ")


def test_a_cycle_in_the_chain_ends() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert connection_lost(Conn(broken=True), a) is None  # type: ignore[arg-type]


def test_no_connection_at_all_with_a_driver_error_is_lost() -> None:
    conn: Any = None
    assert connection_lost(conn, OPERATIONAL) is not None
