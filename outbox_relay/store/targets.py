"""Whatever connection the caller holds, as the psycopg connection of its open transaction.

``publish`` takes what the application already has: a psycopg 3 connection or cursor; a
SQLAlchemy ``Session``, ``scoped_session`` or ``Connection`` (and their async
counterparts) on the psycopg driver; Django's ``django.db.connection``,
``connections[alias]`` or one of their cursors. Subclasses count as their framework's
class, so SQLModel's sessions and an application's own pass. Each becomes the psycopg
connection underneath, inside the transaction the framework has open (or begins, the way
the framework itself would); anything else is refused with what to pass instead.

Frameworks are recognised by their own classes, looked up in ``sys.modules``: nothing is
imported here, and an object of a framework the process never imported cannot exist.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import psycopg

from outbox_relay.errors import InvalidMessageError
from outbox_relay.store.writer import AsyncTarget, SyncTarget

_SQLALCHEMY_SYNC = {
    "sqlalchemy.orm": ("Session", "scoped_session"),
    "sqlalchemy.engine": ("Connection",),
}
_SQLALCHEMY_ASYNC = {
    "sqlalchemy.ext.asyncio": ("AsyncSession", "async_scoped_session", "AsyncConnection"),
}


def sync_target(conn: object) -> SyncTarget:
    """The psycopg connection or cursor :func:`publish` writes on, for ``conn``."""
    if isinstance(conn, (psycopg.Connection, psycopg.Cursor)):
        return conn
    _check_side(conn, want_async=False)
    django = _django_database(conn)
    if django is not None:
        return _from_django(django)
    if _is_instance(conn, _SQLALCHEMY_SYNC):
        return _from_sqlalchemy(conn)
    raise _unsupported(conn)


async def async_target(conn: object) -> AsyncTarget:
    """The psycopg async connection or cursor :func:`publish_async` writes on, for ``conn``."""
    if isinstance(conn, (psycopg.AsyncConnection, psycopg.AsyncCursor)):
        return conn
    _check_side(conn, want_async=True)
    if _is_instance(conn, _SQLALCHEMY_ASYNC):
        return await _from_sqlalchemy_async(conn)
    raise _unsupported(conn)


def _check_side(conn: object, *, want_async: bool) -> None:
    """Refuses a sync connection given to an async function, and the reverse."""
    if want_async:
        if _django_database(conn) is not None:
            raise InvalidMessageError(
                "conn: Django's connections are synchronous; use publish() (from async code, "
                "inside the function you hand to asgiref's sync_to_async)"
            )
        if isinstance(conn, (psycopg.Connection, psycopg.Cursor)) or _is_instance(
            conn, _SQLALCHEMY_SYNC
        ):
            raise InvalidMessageError(
                "conn: a sync connection was passed to publish_async(); use publish()"
            )
    elif isinstance(conn, (psycopg.AsyncConnection, psycopg.AsyncCursor)) or _is_instance(
        conn, _SQLALCHEMY_ASYNC
    ):
        raise InvalidMessageError(
            "conn: an async connection was passed to publish(); use publish_async()"
        )


def _class(module: str, name: str) -> type | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _is_instance(conn: object, classes: Mapping[str, tuple[str, ...]]) -> bool:
    return any(
        isinstance(conn, cls)
        for module, names in classes.items()
        for name in names
        if (cls := _class(module, name)) is not None
    )


# SQLAlchemy ----------------------------------------------------------------------------


def _from_sqlalchemy(conn: Any) -> SyncTarget:
    if _is_instance(conn, {"sqlalchemy.orm": ("scoped_session",)}):
        conn = conn()  # the session of the current scope
    if _is_instance(conn, {"sqlalchemy.orm": ("Session",)}):
        conn = conn.connection()  # joins (or begins) the session's transaction
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise _unsupported_driver(driver)
    _check_not_autocommit(driver)
    if not conn.in_transaction():
        # What SQLAlchemy's autobegin does on a first execute(): without it, a message
        # written alone would be rolled back when the connection goes back to the pool,
        # and commit() would have nothing to commit.
        conn.begin()
    return driver


async def _from_sqlalchemy_async(conn: Any) -> AsyncTarget:
    if _is_instance(conn, {"sqlalchemy.ext.asyncio": ("async_scoped_session",)}):
        conn = conn()
    if _is_instance(conn, {"sqlalchemy.ext.asyncio": ("AsyncSession",)}):
        conn = await conn.connection()
    driver = (await conn.get_raw_connection()).driver_connection
    if not isinstance(driver, psycopg.AsyncConnection):
        raise _unsupported_driver(driver)
    _check_not_autocommit(driver)
    if not conn.in_transaction():
        await conn.begin()
    return driver


def _check_not_autocommit(driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if driver.autocommit:
        raise InvalidMessageError(
            "conn: the SQLAlchemy connection runs with isolation_level='AUTOCOMMIT', so the "
            "message would commit apart from your domain write; publish on a session or "
            "connection of an engine without it"
        )


def _unsupported_driver(driver: object) -> InvalidMessageError:
    return InvalidMessageError(
        f"conn: SQLAlchemy is using the {type(driver).__module__} driver; outbox-relay needs "
        "psycopg 3: create the engine with a 'postgresql+psycopg://' URL"
    )


# Django --------------------------------------------------------------------------------


def _django_database(conn: Any) -> Any | None:
    """Django's database wrapper behind ``conn`` (a proxy such as ``django.db.connection``
    stands for it: every attribute is read through), or None when ``conn`` is not Django's."""
    if _is_instance(conn, {"django.db.backends.utils": ("CursorWrapper",)}):
        return conn.db
    if _is_instance(conn, {"django.db.backends.base.base": ("BaseDatabaseWrapper",)}):
        return conn
    if _is_instance(conn, {"django.utils.connection": ("ConnectionProxy",)}) and hasattr(
        conn, "in_atomic_block"
    ):
        return conn
    return None


def _from_django(db: Any) -> SyncTarget:
    alias = db.alias
    if db.vendor != "postgresql":
        raise InvalidMessageError(
            f"conn: Django database {alias!r} uses the {db.vendor} backend; the outbox lives "
            "in PostgreSQL: publish on a database whose ENGINE is "
            "'django.db.backends.postgresql'"
        )
    db.ensure_connection()
    raw = db.connection
    if not isinstance(raw, psycopg.Connection):
        raise InvalidMessageError(
            f"conn: Django database {alias!r} runs on the {type(raw).__module__} driver; "
            "outbox-relay needs psycopg 3, which Django uses from 4.2 on when it is installed: "
            "upgrade Django to 4.2 or later"
        )
    if db.in_atomic_block and db.needs_rollback:
        raise InvalidMessageError(
            f"conn: Django's transaction on {alias!r} is marked for rollback (an error or "
            "set_rollback(True) inside transaction.atomic()), so the message would vanish with "
            "it; publish in a transaction that will commit"
        )
    if not db.in_atomic_block and db.get_autocommit():
        raise InvalidMessageError(
            f"conn: Django database {alias!r} is in autocommit mode outside "
            "transaction.atomic(), so the message would commit apart from your domain write; "
            "wrap the write and the publish() in `with transaction.atomic():`"
        )
    return raw


def _unsupported(conn: object) -> InvalidMessageError:
    return InvalidMessageError(
        f"conn: {type(conn).__name__} is not supported; pass a psycopg 3 Connection or Cursor, "
        "a SQLAlchemy Session or Connection on the psycopg driver, or Django's connection "
        "or one of its cursors"
    )
