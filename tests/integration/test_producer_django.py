"""publish() on real PostgreSQL through what a Django application holds: the
``django.db.connection`` proxy, ``connections[alias]`` and its cursors (the debug wrapper
too), inside ``transaction.atomic()``. The message commits and rolls back with the domain
write; outside an atomic block (Django's autocommit) publish() refuses and says so.

Django's settings are process-wide: they are configured once, for the whole session, with
a PostgreSQL alias ``default``, a second one ``other`` and an SQLite ``lite``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

import outbox_relay
from outbox_relay import InvalidMessageError, Message
from tests.support.producing import committed, create_orders

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def django_databases(database_url: str) -> None:
    if settings.configured:
        return
    params = conninfo_to_dict(database_url)
    postgres = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", ""),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
    }
    settings.configure(
        DATABASES={
            "default": postgres,
            "other": dict(postgres),
            "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
        USE_TZ=True,
    )
    django.setup()


@pytest.fixture
def django_db(django_databases: None) -> Iterator[None]:
    yield
    connections.close_all()


class Rollback(Exception):  # noqa: N818 (it is not an error: the test's way to roll back)
    """Raised inside an atomic block to make Django roll it back."""


def debug_cursor(alias: str) -> Any:
    """The cursor Django hands out when it records queries (DEBUG=True)."""
    db = connections[alias]
    db.force_debug_cursor = True
    try:
        cursor = db.cursor()
    finally:
        db.force_debug_cursor = False
    assert type(cursor).__name__ == "CursorDebugWrapper"
    return cursor


# What the application passes to publish(), made inside the atomic block, and its alias.
HOLDERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "django.db.connection": ("default", lambda: connection),
    "connections['other']": ("other", lambda: connections["other"]),
    # a lambda: the proxy finds its connection when called, and Django is set up by then
    "cursor": ("default", lambda: connection.cursor()),  # noqa: PLW0108
    "debug cursor": ("other", lambda: debug_cursor("other")),
}


@pytest.mark.parametrize("kind", HOLDERS)
def test_the_message_commits_and_rolls_back_with_the_atomic_block(
    kind: str, django_db: None, database_url: str, schema: str
) -> None:
    orders = create_orders(database_url, schema)
    alias, holder = HOLDERS[kind]

    def order(order_id: int, *, rollback: bool) -> None:
        with transaction.atomic(using=alias):
            with connections[alias].cursor() as cursor:
                cursor.execute(f"INSERT INTO {orders} VALUES (%s)", [order_id])
            outbox_relay.publish(
                holder(), exchange="orders", routing_key="a", payload=order_id, schema=schema
            )
            outbox_relay.publish_many(
                holder(),
                [Message(exchange="orders", routing_key="a", payload=-order_id)],
                schema=schema,
            )
            assert committed(database_url, schema) == ([], [])  # nothing before the commit
            if rollback:
                raise Rollback

    with pytest.raises(Rollback):
        order(1, rollback=True)
    assert committed(database_url, schema) == ([], [])
    order(2, rollback=False)
    assert committed(database_url, schema) == ([2], [2, -2])


def test_a_savepoint_rolled_back_takes_its_message_with_it(
    django_db: None, database_url: str, schema: str
) -> None:
    create_orders(database_url, schema)
    with transaction.atomic():
        outbox_relay.publish(connection, exchange="o", routing_key="a", payload=1, schema=schema)
        with contextlib.suppress(Rollback), transaction.atomic():
            outbox_relay.publish(
                connection, exchange="o", routing_key="a", payload=2, schema=schema
            )
            raise Rollback
    assert committed(database_url, schema) == ([], [1])


@pytest.mark.parametrize("kind", HOLDERS)
def test_outside_an_atomic_block_publish_says_to_open_one(
    kind: str, django_db: None, database_url: str, schema: str
) -> None:
    create_orders(database_url, schema)
    _, holder = HOLDERS[kind]
    with pytest.raises(InvalidMessageError, match=r"transaction\.atomic\(\)"):
        outbox_relay.publish(holder(), exchange="o", routing_key="a", payload=1, schema=schema)
    assert committed(database_url, schema) == ([], [])


def test_a_block_marked_for_rollback_is_refused(django_db: None, schema: str) -> None:
    with transaction.atomic():
        transaction.set_rollback(True)
        with pytest.raises(InvalidMessageError, match="marked for rollback"):
            outbox_relay.publish(
                connection, exchange="o", routing_key="a", payload=1, schema=schema
            )


def test_a_database_other_than_postgresql_is_named(django_db: None, schema: str) -> None:
    with (
        transaction.atomic(using="lite"),
        pytest.raises(InvalidMessageError, match="'lite' uses the sqlite backend"),
    ):
        outbox_relay.publish(
            connections["lite"], exchange="o", routing_key="a", payload=1, schema=schema
        )


class Psycopg2Connection:
    """Stands for the psycopg2 connection Django before 4.2 holds (psycopg 3 is always
    installed with outbox-relay, so Django 4.2+ never picks psycopg2 here)."""

    __module__ = "psycopg2.extensions"


def test_a_django_on_psycopg2_is_told_to_upgrade(
    django_db: None, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections["other"], "connection", Psycopg2Connection())
    with pytest.raises(InvalidMessageError, match=r"psycopg2\.extensions driver.*Django to 4\.2"):
        outbox_relay.publish(
            connections["other"], exchange="o", routing_key="a", payload=1, schema=schema
        )


def test_publish_async_names_publish_for_django(django_db: None, schema: str) -> None:
    with pytest.raises(InvalidMessageError, match=r"use publish\(\)"):
        asyncio.run(
            outbox_relay.publish_async(
                connection, exchange="o", routing_key="a", payload=1, schema=schema
            )
        )
