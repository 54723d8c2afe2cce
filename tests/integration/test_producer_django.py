"""publish() on real PostgreSQL through what a Django application holds: the
``django.db.connection`` proxy, ``connections[alias]`` and its cursors (the debug wrapper
too), inside ``transaction.atomic()``. The message commits and rolls back with the domain
write; outside an atomic block (Django's autocommit) publish() refuses and says so.

The outbox also gets into a Django project the way its tables do: a migration that runs
the SQL `outbox-relay sql` prints (the ``shop`` app below, written as the producing guide
shows it).

Django's settings are process-wide: they are configured once, for the whole session, with
a PostgreSQL alias ``default``, a second one ``other``, one for the ``shop`` app whose
search_path each test sets to its own schema, and an SQLite ``lite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import outbox_relay
from outbox_relay import InvalidMessageError, OutboxMessage
from tests.conftest import unique_name
from tests.support.producing import committed, create_orders

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402

pytestmark = pytest.mark.integration


# A Django app with a model and its migrations, then the outbox's migration as the
# producing guide shows it, next to the SQL `outbox-relay sql` printed.
SHOP_FILES = {
    "__init__.py": "",
    "models.py": """\
from django.db import models


class Order(models.Model):
    total = models.IntegerField()
""",
    "migrations/__init__.py": "",
    "migrations/0001_initial.py": """\
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    operations = [
        migrations.CreateModel(
            "Order",
            fields=[
                ("id", models.BigAutoField(primary_key=True)),
                ("total", models.IntegerField()),
            ],
        ),
    ]
""",
    "migrations/0002_outbox.py": """\
from pathlib import Path

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    operations = [
        migrations.RunSQL(Path(__file__).with_name("0002_outbox.sql").read_text()),
    ]
""",
}


@pytest.fixture(scope="session")
def shop_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``shop`` app's folder, importable for the session."""
    root = tmp_path_factory.mktemp("django_project")
    for name, text in SHOP_FILES.items():
        path = root / "shop" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    sys.path.insert(0, str(root))
    yield root / "shop"
    sys.path.remove(str(root))


@pytest.fixture(scope="session")
def django_databases(database_url: str, shop_app: Path) -> None:
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
            "shop": {**postgres, "OPTIONS": {}},
            "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
        INSTALLED_APPS=["shop"],
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
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
                [OutboxMessage(exchange="orders", routing_key="a", payload=-order_id)],
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


@pytest.fixture
def shop_schema(django_db: None, database_url: str, shop_app: Path) -> Iterator[str]:
    """An empty schema of this test's own that the ``shop`` alias works in, with the SQL
    `outbox-relay sql --schema` prints for it next to the outbox's migration."""
    name = unique_name("t")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    printed = subprocess.run(
        [Path(sys.executable).with_name("outbox-relay"), "sql", "--schema", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    (shop_app / "migrations" / "0002_outbox.sql").write_text(printed)
    connections["shop"].settings_dict["OPTIONS"]["options"] = f"-c search_path={name}"
    yield name
    connections.close_all()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def test_a_django_migration_creates_the_outbox_and_orders_publish_with_the_orm(
    shop_schema: str, database_url: str
) -> None:
    from shop.models import Order

    out = io.StringIO()
    call_command("migrate", "shop", database="shop", stdout=out)
    assert "Applying shop.0002_outbox... OK" in out.getvalue()

    def order(total: int, *, rollback: bool) -> None:
        with transaction.atomic(using="shop"):
            created = Order.objects.using("shop").create(total=total)
            outbox_relay.publish(
                connections["shop"],
                exchange="orders",
                routing_key="order.created",
                payload={"id": created.id, "total": total},
                schema=shop_schema,
            )
            if rollback:
                raise Rollback

    with pytest.raises(Rollback):
        order(1, rollback=True)
    order(2, rollback=False)
    totals, payloads = committed(database_url, shop_schema, table="shop_order", column="total")
    assert totals == [2]
    assert [payload["total"] for payload in payloads] == [2]
