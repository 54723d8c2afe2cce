"""Least privilege: the relay and a producer work with only the grants `sql --grants` prints."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

import outbox_relay
from outbox_relay.cli import main
from outbox_relay.errors import StoreError
from outbox_relay.store.deadline import Deadlines
from outbox_relay.store.flow import FlowStore
from outbox_relay.store.schema import grants_sql
from outbox_relay.store.sqlfiles import Queries, sql_dir
from tests.conftest import unique_name
from tests.support.broker import BrokerHelper
from tests.support.relay import outbox_rows, running_relay, wait_for

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def login_roles(database_url: str, *prefixes: str) -> Iterator[tuple[str, ...]]:
    """Login roles with no privileges (unique names), dropped afterwards."""
    names = tuple(unique_name(prefix) for prefix in prefixes)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for role in names:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield names
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for role in names:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def roles(database_url: str) -> Iterator[tuple[str, ...]]:
    """Roles for a relay, a producer and a consumer."""
    with login_roles(database_url, "relay", "producer", "consumer") as names:
        yield names


def printed_grants(schema: str, *grants: str) -> str:
    """What `outbox-relay sql --schema SCHEMA --grants G ...` prints."""
    args = ["sql", "--schema", schema]
    for grant in grants:
        args += ["--grants", grant]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output


def as_role(database_url: str, role: str) -> str:
    return make_conninfo(database_url, user=role)


def test_the_printed_grants_are_enough_and_no_more(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    roles: tuple[str, ...],
) -> None:
    relay_role, producer_role, consumer_role = roles
    grants = printed_grants(
        schema, f"relay={relay_role}", f"producer={producer_role}", f"consumer={consumer_role}:b"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A hardened database: nothing runs on PUBLIC's default EXECUTE right.
        conn.execute(
            sql.SQL("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {} FROM PUBLIC").format(
                sql.Identifier(schema)
            )
        )
        conn.execute(grants)  # type: ignore[call-overload]

    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    with psycopg.connect(as_role(database_url, producer_role)) as conn:
        for n in range(10):
            outbox_relay.publish(
                conn, exchange=exchange, routing_key="k", payload={"n": n}, schema=schema
            )
        conn.commit()
        for statement in ("SELECT * FROM {}.outbox", "DELETE FROM {}.outbox"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL(statement).format(sql.Identifier(schema)))
            conn.rollback()

    with running_relay(as_role(database_url, relay_role), amqp_url, schema):
        assert len(broker.drain(queue, expect=10)) == 10
        assert wait_for(lambda: not outbox_rows(database_url, schema))

    with psycopg.connect(as_role(database_url, relay_role)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.outbox (message_id, exchange, routing_key, payload,"
                    " content_type) VALUES (gen_random_uuid(), 'x', 'k', '', 'x')"
                ).format(sql.Identifier(schema))
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                sql.SQL("SELECT 1 FROM {}.outbox_migrations").format(sql.Identifier(schema))
            )


def test_no_placeholder_sits_in_a_comment_of_the_composed_files() -> None:
    """A quoted schema or role name may hold a newline; inside a `--` comment it would end
    the comment and turn the rest of the name into SQL."""
    placeholder = re.compile(r"--.*\{(schema|role|channel|partitions|policy|apps)\}")
    files: list[Path] = [
        *sql_dir().glob("*.sql"),
        *sql_dir().glob("migrations/*.sql"),
        *sql_dir().glob("grants/*.sql"),
    ]
    assert files
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            assert not placeholder.search(line), f"{path.name}: {line}"


def inbox_row(consumer: str, message_id: str) -> dict[str, str]:
    """The inbox insert's parameters, waiting for locks as the session does."""
    return {
        "consumer": consumer,
        "message_id": message_id,
        "lock_wait": "0",
        "lock_wait_after": "0",
    }


def test_the_consumer_grants_cover_its_inbox_statements(
    database_url: str, schema: str, roles: tuple[str, ...]
) -> None:
    _, _, consumer_role = roles
    with psycopg.connect(database_url, autocommit=True) as conn:
        grants = grants_sql(
            schema=schema,
            roles=[("consumer", consumer_role)],
            consumer_apps={consumer_role: ["billing"]},
        )
        conn.execute(grants)  # type: ignore[call-overload]
    queries = Queries("consumer", schema=schema)
    message_id = uuid.uuid4()
    with psycopg.connect(as_role(database_url, consumer_role)) as conn:
        insert = inbox_row("billing:billing.orders", message_id)
        assert conn.execute(queries["inbox_insert"], insert).fetchone() is not None
        assert conn.execute(queries["inbox_insert"], insert).fetchone() is None  # duplicate
        conn.execute(queries["inbox_purge"], {"older_than_s": 0, "batch": 100})
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SELECT 1 FROM {}.outbox").format(sql.Identifier(schema)))


@pytest.fixture
def two_consumers(database_url: str) -> Iterator[tuple[str, ...]]:
    """Roles for two consumer applications sharing one inbox."""
    with login_roles(database_url, "billing", "shipping") as names:
        yield names


def test_a_consumer_role_cannot_touch_another_consumers_inbox_rows(
    database_url: str, schema: str, two_consumers: tuple[str, ...]
) -> None:
    """The inbox is keyed by (consumer, message_id), consumer being "<app name>:<queue>";
    each role works only on the rows of the app names it was granted."""
    billing_role, shipping_role = two_consumers
    grants = printed_grants(
        schema, f"consumer={billing_role}:billing", f"consumer={shipping_role}:shipping,shipping-v2"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(grants)  # type: ignore[call-overload]
        conn.execute(grants)  # type: ignore[call-overload]  # applying twice is fine
    queries = Queries("consumer", schema=schema)
    inbox = sql.Identifier(schema, "inbox")
    billing_ids = [str(uuid.uuid4()) for _ in range(3)]
    with psycopg.connect(as_role(database_url, billing_role)) as conn:
        for message_id in billing_ids:
            row = inbox_row("billing:billing.orders", message_id)
            assert conn.execute(queries["inbox_insert"], row).fetchone() is not None
            assert conn.execute(queries["inbox_insert"], row).fetchone() is None  # duplicate
        conn.commit()
    with psycopg.connect(as_role(database_url, shipping_role)) as conn:
        row = inbox_row("shipping-v2:ship.orders", billing_ids[0])
        assert conn.execute(queries["inbox_insert"], row).fetchone() is not None
        conn.commit()
        # Nothing of billing's can be seen, deleted, purged or forged.
        assert conn.execute(sql.SQL("SELECT consumer FROM {}").format(inbox)).fetchall() == [
            ("shipping-v2:ship.orders",)
        ]
        assert conn.execute(sql.SQL("DELETE FROM {}").format(inbox)).rowcount == 1
        conn.execute(queries["inbox_purge"], {"older_than_s": 0, "batch": 100})
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(queries["inbox_insert"], inbox_row("billing:x", billing_ids[0]))
        conn.rollback()
        # A name that only starts like another app's is still another app.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(queries["inbox_insert"], inbox_row("shippingx:q", "m"))
        conn.rollback()
    with psycopg.connect(database_url) as conn:
        kept = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(inbox)).fetchone()
        assert kept == (3,)


def test_consumer_grants_need_the_app_names() -> None:
    for value in ("consumer=billing_role", "consumer=billing_role:", "consumer=r:a:b"):
        result = CliRunner().invoke(main, ["sql", "--grants", value])
        assert result.exit_code == 2, result.output
        assert "consumer=ROLE:APP" in result.output


def test_the_consumer_ends_a_handler_session_only_while_its_transaction_runs(
    database_url: str, schema: str, roles: tuple[str, str, str]
) -> None:
    """Behind a pooler the server session of a timed-out handler serves another client
    once the handler's transaction ended: the consumer role ends it only while the
    transaction the inbox insert started still runs there."""
    _, _, consumer_role = roles
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            grants_sql(
                schema=schema,
                roles=[("consumer", consumer_role)],
                consumer_apps={consumer_role: ["billing"]},
            )
        )  # type: ignore[call-overload]
    queries = Queries("consumer", schema=schema)
    url = as_role(database_url, consumer_role)
    handler = psycopg.connect(url)
    try:
        inserted = handler.execute(
            queries["inbox_insert"],
            inbox_row("billing:billing.orders", str(uuid.uuid4())),
        ).fetchone()
        assert inserted is not None
        pid, xact_start, _ = inserted
        with psycopg.connect(url, autocommit=True) as admin:
            earlier = {"pid": pid, "xact_start": xact_start - dt.timedelta(microseconds=1)}
            assert admin.execute(queries["terminate_backend"], earlier).fetchall() == []
            assert not handler.closed
            ended = {"pid": pid, "xact_start": xact_start}
            assert admin.execute(queries["terminate_backend"], ended).fetchall() == [(True,)]
    finally:
        handler.close()


def test_a_consumer_role_shares_rate_limits_and_pauses_only_with_its_own_app(
    database_url: str, schema: str, two_consumers: tuple[str, ...]
) -> None:
    """consumer_flow is keyed like the inbox and under the same policy: an app can take
    tokens and pause its own handlers, not another app's."""
    billing_role, shipping_role = two_consumers
    grants = printed_grants(
        schema, f"consumer={billing_role}:billing", f"consumer={shipping_role}:shipping"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(grants)  # type: ignore[call-overload]

    def store(role: str) -> FlowStore:
        return FlowStore(
            url=as_role(database_url, role),
            schema=schema,
            application_name="grants test",
            deadlines=Deadlines(timeout_s=0),
        )

    billing, shipping = store(billing_role), store(shipping_role)
    try:
        billing.check()
        lease = billing.lease(consumer="billing:orders", key="", count=1, span_s=1.0)
        assert lease.granted
        assert billing.pause(consumer="billing:orders", seconds=30) > 29
        assert shipping.paused(["billing:orders"]) == {}  # not even seen
        with pytest.raises(StoreError, match=r"permission denied|row-level security"):
            shipping.pause(consumer="billing:orders", seconds=1)
        with pytest.raises(StoreError, match=r"permission denied|row-level security"):
            shipping.lease(consumer="billing:orders", key="t", count=1, span_s=1.0)
        assert shipping.lease(consumer="shipping:q", key="", count=1, span_s=1.0).granted
    finally:
        billing.close()
        shipping.close()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT consumer, key FROM {} ORDER BY 1").format(
                sql.Identifier(schema, "consumer_flow")
            )
        ).fetchall()
    assert rows == [("billing:orders", ""), ("shipping:q", "")]
