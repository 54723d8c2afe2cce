"""publish() on real PostgreSQL through what a SQLAlchemy application holds: sessions
(its own subclasses and SQLModel's included), scoped sessions and connections, sync and
async. The message is part of the ORM's transaction: commit keeps the domain row and the
message, rollback removes both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import outbox_relay
from outbox_relay import InvalidMessageError, OutboxMessage
from tests.support.producing import committed, create_orders

sqlalchemy = pytest.importorskip("sqlalchemy")
sqlmodel = pytest.importorskip("sqlmodel")

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import (  # noqa: E402
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession  # noqa: E402

pytestmark = pytest.mark.integration


class AppSession(Session):
    """An application's own session class, as many codebases define one."""


class AppAsyncSession(AsyncSession):
    """The async counterpart."""


def execute(holder: Any, statement: str) -> Any:
    """Runs SQL the way the holder's users do: SQLModel's sessions deprecate execute()."""
    return getattr(holder, "exec", holder.execute)(text(statement))


def sqlalchemy_url(database_url: str, *, driver: str = "psycopg") -> str:
    return database_url.replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Any]:
    engine = sqlalchemy.create_engine(sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


SYNC_HOLDERS: dict[str, Callable[[Any], Any]] = {
    "Session": Session,
    "Session subclass": AppSession,
    "SQLModel Session": sqlmodel.Session,
    "scoped_session": lambda engine: scoped_session(sessionmaker(engine)),
    "Connection": lambda engine: engine.connect(),
}


@pytest.mark.parametrize("kind", SYNC_HOLDERS)
def test_the_message_commits_and_rolls_back_with_the_domain_write(
    kind: str, engine: Any, database_url: str, schema: str
) -> None:
    orders = create_orders(database_url, schema)
    holder = SYNC_HOLDERS[kind](engine)
    try:
        # published first: publish() itself must open the transaction the domain write joins
        outbox_relay.publish(holder, exchange="orders", routing_key="a", payload=1, schema=schema)
        execute(holder, f"INSERT INTO {orders} VALUES (1)")
        holder.rollback()
        assert committed(database_url, schema) == ([], [])

        execute(holder, f"INSERT INTO {orders} VALUES (2)")
        outbox_relay.publish(holder, exchange="orders", routing_key="a", payload=2, schema=schema)
        outbox_relay.publish_many(
            holder, [OutboxMessage(exchange="orders", routing_key="a", payload=3)], schema=schema
        )
        assert committed(database_url, schema) == ([], [])  # nothing before the commit
        holder.commit()
        assert committed(database_url, schema) == ([2], [2, 3])

        # a message alone is a transaction too: commit() must not find nothing to commit
        outbox_relay.publish(holder, exchange="orders", routing_key="a", payload=4, schema=schema)
        holder.commit()
        assert committed(database_url, schema) == ([2], [2, 3, 4])
    finally:
        holder.close()


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


class SQLModelOrder(sqlmodel.SQLModel, table=True):
    __tablename__ = "orders"
    id: int = sqlmodel.Field(primary_key=True)
    total: int


def test_the_guides_examples(database_url: str, schema: str) -> None:
    """The producing guide's SQLAlchemy and SQLModel examples; the models' tables are
    mapped to the test's schema, the examples publish there."""
    create_orders(database_url, schema)
    in_schema = {"schema_translate_map": {None: schema}}
    engine = sqlalchemy.create_engine(sqlalchemy_url(database_url), execution_options=in_schema)
    try:
        with Session(engine) as session, session.begin():
            session.add(Order(id=1, total=990))
            outbox_relay.publish(
                session,
                exchange="orders",
                routing_key="order.created",
                payload={"order_id": 1},
                schema=schema,
            )

        with sqlmodel.Session(engine) as session:
            session.add(SQLModelOrder(id=2, total=990))
            outbox_relay.publish(
                session,
                exchange="orders",
                routing_key="order.created",
                payload={"order_id": 2},
                schema=schema,
            )
            session.commit()

        with engine.begin() as connection:
            connection.execute(sqlalchemy.insert(Order).values(id=3, total=990))
            outbox_relay.publish(
                connection,
                exchange="orders",
                routing_key="order.created",
                payload={"order_id": 3},
                schema=schema,
            )
    finally:
        engine.dispose()

    async def main() -> None:
        async_engine = create_async_engine(
            sqlalchemy_url(database_url), execution_options=in_schema
        )
        try:
            async with AsyncSession(async_engine) as session, session.begin():
                session.add(Order(id=4, total=990))
                await outbox_relay.publish_async(
                    session,
                    exchange="orders",
                    routing_key="order.created",
                    payload={"order_id": 4},
                    schema=schema,
                )
        finally:
            await async_engine.dispose()

    asyncio.run(main())
    assert committed(database_url, schema) == (
        [1, 2, 3, 4],
        [{"order_id": 1}, {"order_id": 2}, {"order_id": 3}, {"order_id": 4}],
    )


def test_an_autocommit_engine_is_refused_with_the_way_out(engine: Any, schema: str) -> None:
    with (
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection,
        pytest.raises(InvalidMessageError, match="isolation_level='AUTOCOMMIT'"),
    ):
        outbox_relay.publish(
            connection, exchange="orders", routing_key="a", payload={}, schema=schema
        )


def test_a_driver_other_than_psycopg_is_named(schema: str) -> None:
    engine = sqlalchemy.create_engine("sqlite://")
    try:
        with (
            Session(engine) as session,
            pytest.raises(InvalidMessageError, match=r"sqlite3 driver.*postgresql\+psycopg"),
        ):
            outbox_relay.publish(
                session, exchange="orders", routing_key="a", payload={}, schema=schema
            )
    finally:
        engine.dispose()


def test_a_sync_session_given_to_publish_async_names_publish(engine: Any, schema: str) -> None:
    with (
        AppSession(engine) as session,
        pytest.raises(InvalidMessageError, match=r"use publish\(\)"),
    ):
        asyncio.run(
            outbox_relay.publish_async(
                session, exchange="orders", routing_key="a", payload={}, schema=schema
            )
        )


ASYNC_HOLDERS: dict[str, Callable[[Any], Any]] = {
    "AsyncSession": AsyncSession,
    "AsyncSession subclass": AppAsyncSession,
    "SQLModel AsyncSession": SQLModelAsyncSession,
    "async_scoped_session": lambda engine: async_scoped_session(
        async_sessionmaker(engine), scopefunc=asyncio.current_task
    ),
    "AsyncConnection": lambda engine: engine.connect(),
}


@pytest.mark.parametrize("kind", ASYNC_HOLDERS)
def test_async_holders_commit_and_roll_back_with_the_domain_write(
    kind: str, database_url: str, schema: str
) -> None:
    orders = create_orders(database_url, schema)

    async def main() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        holder = ASYNC_HOLDERS[kind](engine)
        if kind == "AsyncConnection":
            holder = await holder.start()
        try:
            await outbox_relay.publish_async(
                holder, exchange="orders", routing_key="a", payload=1, schema=schema
            )
            await execute(holder, f"INSERT INTO {orders} VALUES (1)")
            await holder.rollback()
            assert committed(database_url, schema) == ([], [])

            await execute(holder, f"INSERT INTO {orders} VALUES (2)")
            await outbox_relay.publish_async(
                holder, exchange="orders", routing_key="a", payload=2, schema=schema
            )
            await outbox_relay.publish_many_async(
                holder,
                [OutboxMessage(exchange="orders", routing_key="a", payload=3)],
                schema=schema,
            )
            assert committed(database_url, schema) == ([], [])
            await holder.commit()
            assert committed(database_url, schema) == ([2], [2, 3])

            await outbox_relay.publish_async(
                holder, exchange="orders", routing_key="a", payload=4, schema=schema
            )
            await holder.commit()
            assert committed(database_url, schema) == ([2], [2, 3, 4])

            with pytest.raises(InvalidMessageError, match="publish_async"):
                outbox_relay.publish(
                    holder, exchange="orders", routing_key="a", payload={}, schema=schema
                )
        finally:
            await holder.close()
            await engine.dispose()

    asyncio.run(main())
