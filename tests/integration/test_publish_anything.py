"""publish() driven with arbitrary Python values for every argument, a real relay running:
each call either raises InvalidMessageError with the caller's transaction still usable,
or its row is later published or marked dead with a reason, while good rows on other
keys keep flowing through the same relay, which never reconnects because of a row."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from structlog.testing import capture_logs

import outbox_relay
from outbox_relay.errors import InvalidMessageError
from tests.support.broker import BrokerHelper
from tests.support.relay import make_relay, outbox_rows, wait_for
from tests.support.threads import in_background

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Any text, NUL and lone surrogates included, sometimes long.
any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=40) | st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["x", "é", "\x00", "\ud800", "a.b"]),
    st.integers(100, 70_000),
)
junk = st.one_of(
    st.builds(object),
    st.binary(max_size=8),
    st.complex_numbers(),
    st.dates(),
    st.decimals(allow_nan=True),
    st.sets(st.integers(), max_size=2),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.booleans(),
    st.builds(lambda: 10**1000),
)


keys = any_text | st.integers() | st.floats() | st.binary(max_size=4) | st.builds(object)


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = {"t": value} if depth % 2 else [value]
    return value


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | any_text
    | junk,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=12,
)
deep = st.integers(20, 3000).map(nested)
headers = st.one_of(
    st.none(),
    st.dictionaries(any_text, values | deep, max_size=5),
    st.integers(0, 40_000).map(lambda n: {"h": [0] * n}),
    st.integers(0, 40_000).map(lambda n: {"h": "x" * n}),
    values,
)
payloads = values | deep | st.binary(max_size=200)
message_ids = st.none() | st.uuids() | st.uuids().map(str) | any_text | junk
partition_keys = st.none() | any_text | junk
delays = st.one_of(
    st.none(),
    st.floats(),
    st.integers(min_value=-10, max_value=10**20),
    st.just(10**400),
    st.timedeltas(),
    any_text,
    junk,
)
content_types = st.none() | any_text | junk
anything = {
    "exchange": any_text | junk,
    "routing_key": any_text | junk,
    "payload": payloads,
    "headers": headers,
    "message_id": message_ids,
    "partition_key": partition_keys,
    "delay": delays,
    "content_type": content_types,
    **dict.fromkeys(
        ("correlation_id", "reply_to", "type", "app_id", "content_encoding"), any_text | junk
    ),
    "priority": st.integers(min_value=-(2**70), max_value=2**70) | junk,
    "expiration": delays,
}
# The optional AMQP properties: anything one time in twelve (there are many of them).
RARELY_ANYTHING = frozenset(
    ("correlation_id", "reply_to", "type", "app_id", "content_encoding", "priority", "expiration")
)

# Text PostgreSQL stores and AMQP carries.
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(min_value=-(2.0**62), max_value=2.0**62)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


def valid_arguments(exchange: str) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "exchange": st.just(exchange),
        "routing_key": text.filter(lambda key: len(key.encode()) <= 255),
        "payload": json_values | st.binary(max_size=100),
        "headers": st.none()
        | st.dictionaries(
            text.filter(lambda key: 0 < len(key.encode()) <= 255 and not key.startswith("outbox-")),
            json_values,
            max_size=4,
        ),
        "message_id": st.none() | st.uuids(),
        "partition_key": st.none() | text.filter(lambda key: 0 < len(key.encode()) <= 1024),
        "delay": st.none() | st.floats(min_value=0, max_value=1),
        "content_type": st.none(),
        **dict.fromkeys(
            ("correlation_id", "reply_to", "type", "app_id", "content_encoding"),
            st.none() | text.filter(lambda value: len(value.encode()) <= 255),
        ),
        "priority": st.none() | st.integers(0, 255),
        "expiration": st.none() | st.floats(min_value=60, max_value=3600),
    }


def short_lived(expiration: Any) -> bool:
    if isinstance(expiration, dt.timedelta):
        expiration = expiration.total_seconds()
    return expiration is not None and expiration < 60


def test_publish_with_anything_fails_alone_or_goes_out(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    table = sql.Identifier(schema, "domain")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY)").format(table))
    accepted: set[str] = set()
    good: set[str] = set()
    calls: list[int] = []
    refused: list[int] = []

    valid = valid_arguments(exchange)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def publish_anything(data: st.DataObject) -> None:
        # Each argument is anything at all one time in six, else a valid value: about
        # one call in four has all its arguments valid.
        arguments = {
            name: data.draw(
                anything[name]
                if data.draw(
                    st.integers(0, 11 if name in RARELY_ANYTHING else 5),
                    label=f"{name} is anything",
                )
                == 0
                else valid[name],
                label=name,
            )
            for name in anything
        }
        calls.append(1)
        with psycopg.connect(database_url) as conn:
            conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(table))
            try:
                message_id = outbox_relay.publish(conn, schema=schema, **arguments)
            except InvalidMessageError:
                refused.append(1)
                # The caller's transaction is intact: its domain write goes on.
                conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(table))
                conn.commit()
            else:
                conn.commit()
                # A message with a short time to live may expire in the queue before
                # it is read: only the others must arrive.
                if not short_lived(arguments["expiration"]):
                    accepted.add(str(message_id))
            # A good row on a key of its own, in its own transaction.
            good.add(
                str(
                    outbox_relay.publish(
                        conn,
                        schema=schema,
                        exchange=exchange,
                        routing_key="good",
                        payload={"good": len(calls)},
                        partition_key=f"good-{len(calls)}",
                    )
                )
            )
            conn.commit()

    # Its retry jitter, drawn in its thread, must not touch the random module while
    # hypothesis draws (hypothesis takes that for a strategy that uses it).
    relay = make_relay(
        database_url,
        amqp_url,
        schema,
        max_attempts=1,
        poll_interval_s=0.2,
        random_unit=random.Random(0).random,
    )
    with capture_logs() as logs, in_background(relay.run, relay.stop, name="relay"):
        publish_anything()
        # Time passes for the delayed rows.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET available_at = now() WHERE available_at > now()").format(
                    sql.Identifier(schema, "outbox")
                )
            )

        def settled() -> bool:
            return all(dead for (dead,) in outbox_rows(database_url, schema, "dead_at IS NOT NULL"))

        assert wait_for(settled, timeout_s=60), outbox_rows(database_url, schema, "*")
        received = broker.collect(queue, quiet_s=1.0)
        assert not relay.stopping, "the relay stopped"

    received_ids = {m.properties.message_id for m in received}
    assert good <= received_ids, "a good row was not delivered"
    dead = {
        str(message_id): error
        for message_id, error in outbox_rows(database_url, schema, "message_id, last_error")
    }
    for message_id in accepted:
        assert message_id in received_ids or dead.get(message_id), message_id
    assert all(dead.values()), "a dead row without a reason"
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    assert row is not None
    assert row[0] == len(calls) + len(refused), "a domain write was lost"
    events = [entry["event"] for entry in logs]
    assert events.count("publisher.connected") == 1, "a row cost a reconnect"
    assert "relay.broker_unavailable" not in events
    assert "relay.database_unavailable" not in events


def test_a_refused_call_leaves_the_callers_transaction_and_its_write_intact(
    database_url: str, schema: str
) -> None:
    """The cases that aborted the transaction or raised another error, one by one."""
    cases: list[dict[str, Any]] = [
        {"headers": {"a\x00": 1}},
        {"headers": {"a": "b\x00"}},
        {"delay": 1e13},
        {"delay": 1e300},
        {"delay": 10**400},
        {"exchange": "ex\x00"},
        {"routing_key": "k\x00"},
        {"partition_key": "\x00"},
        {"exchange": "\ud800"},
        {"headers": {"a": nested(5000)}},
        {"payload": nested(5000)},
        {"headers": {"h": [0] * 30000}},
        {"message_id": "x" * 100_000},
    ]
    table = sql.Identifier(schema, "domain")
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY)").format(table))
        conn.commit()
        for case in cases:
            arguments: dict[str, Any] = {
                "exchange": "ex",
                "routing_key": "k",
                "payload": {"a": 1},
                **case,
            }
            conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(table))
            with pytest.raises(InvalidMessageError):
                outbox_relay.publish(conn, schema=schema, **arguments)
            conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(table))
            conn.commit()
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        assert row == (2 * len(cases),)
        assert outbox_rows(database_url, schema) == []


def test_a_year_of_delay_is_accepted_and_held(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url) as conn:
        outbox_relay.publish(
            conn,
            schema=schema,
            exchange="ex",
            routing_key="k",
            payload={},
            delay=dt.timedelta(days=365),
            message_id=uuid.uuid4(),
        )
        conn.commit()
    [(in_days,)] = outbox_rows(
        database_url, schema, "round(extract(epoch FROM available_at - created_at) / 86400)"
    )
    assert in_days == 365
