"""What server-side prepared statements save on a direct connection.

Behind a transaction-mode pooler the relay and the consumer turn psycopg's prepared
statements off (see outbox_relay/store/pooler.py); on a direct connection they keep them
if that is measurably faster. This measures it, same run, on the same connections:

- ``claim+settle``: the relay's cycle over a backlog, claim 10 rows and delete them (small
  batches, so planning weighs as much as it can);
- ``empty claim``: a claim that finds nothing and its end (an idle or polling relay);
- ``inbox``: a consumer's handler transaction with nothing else in it (insert, commit);
- ``publish``: a producer's transaction with one publish() and nothing else (the
  application chooses its connection's ``prepare_threshold``).

Each case runs in interleaved rounds, prepared and unprepared alternately; the figure is
the median of the rounds' own ratios (unprepared time / prepared time).

    python -m benchmarks.prepared [--rounds 7] [--cycles 400]
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg

import outbox_relay
from benchmarks.common import Env, fill_committed, median, outbox_schema
from outbox_relay.store.inbox import HandlerSession
from outbox_relay.store.relay_store import PostgresStore

BATCH = 10
BATCH_BYTES = 8 * 1024 * 1024
WARM_UP_CYCLES = 20
T = TypeVar("T")


@contextlib.contextmanager
def relay_store(database_url: str, schema: str, *, prepare: bool) -> Iterator[PostgresStore]:
    store = PostgresStore(
        url=database_url, schema=schema, relay_id=uuid.uuid4().hex, lease_ttl_s=30
    )
    store.connect()
    if not prepare:
        for conn in store.work_connections():
            conn.prepare_threshold = None
    store.heartbeat()
    try:
        yield store
    finally:
        store.release_leases()
        store.close()


@contextlib.contextmanager
def handler_session(database_url: str, schema: str, *, prepare: bool) -> Iterator[HandlerSession]:
    session = HandlerSession(url=database_url, schema=schema, application_name="bench")
    inbox(session, 1)  # connects
    if not prepare:
        session.connection.prepare_threshold = None
    try:
        yield session
    finally:
        session.close()


def measured(
    resource: contextlib.AbstractContextManager[T], loop: Callable[[T, int], float], cycles: int
) -> float:
    """Seconds a cycle of ``loop`` takes, once past psycopg's preparing threshold."""
    with resource as thing:
        loop(thing, WARM_UP_CYCLES)
        return loop(thing, cycles)


def claim_settle(store: PostgresStore, cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        claim = store.claim(BATCH, BATCH_BYTES)
        claim.settle([row.id for row in claim.rows], [])
    return (time.perf_counter() - started) / cycles


def empty_claim(store: PostgresStore, cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        store.claim(BATCH, BATCH_BYTES).release()
    return (time.perf_counter() - started) / cycles


def inbox(session: HandlerSession, cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        session.begin(consumer="bench", message_id=uuid.uuid4().hex)
        session.commit()
    return (time.perf_counter() - started) / cycles


@contextlib.contextmanager
def producer_connection(database_url: str, *, prepare: bool) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, prepare_threshold=5 if prepare else None) as conn:
        yield conn


def make_publish(schema: str) -> Callable[[psycopg.Connection[Any], int], float]:
    def publish(conn: psycopg.Connection[Any], cycles: int) -> float:
        started = time.perf_counter()
        for n in range(cycles):
            outbox_relay.publish(
                conn, exchange="bench", routing_key="k", payload={"n": n}, schema=schema
            )
            conn.commit()
        return (time.perf_counter() - started) / cycles

    return publish


def run_case(
    name: str, rounds: int, measure: Callable[[bool], float]
) -> tuple[float, float, float]:
    ratios, prepared, unprepared = [], [], []
    for _ in range(rounds):
        with_prepared = measure(True)
        without = measure(False)
        prepared.append(with_prepared)
        unprepared.append(without)
        ratios.append(without / with_prepared)
    result = (median(prepared) * 1e3, median(unprepared) * 1e3, median(ratios))
    print(
        f"{name:14s} prepared {result[0]:.3f} ms  unprepared {result[1]:.3f} ms  "
        f"unprepared/prepared {result[2]:.3f} (median of {rounds} rounds)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prepared")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cycles", type=int, default=400)
    args = parser.parse_args()
    env = Env.from_environment(quick=False)
    url, cycles = env.database_url, args.cycles
    with outbox_schema(url) as schema:

        def backlog(prepare: bool) -> float:
            fill_committed(url, schema, "bench", BATCH * cycles, size=512)
            store = relay_store(url, schema, prepare=prepare)
            return measured(store, claim_settle, cycles - WARM_UP_CYCLES)

        def idle(prepare: bool) -> float:
            return measured(relay_store(url, schema, prepare=prepare), empty_claim, cycles)

        def consumer(prepare: bool) -> float:
            return measured(handler_session(url, schema, prepare=prepare), inbox, cycles)

        def producer(prepare: bool) -> float:
            conn = producer_connection(url, prepare=prepare)
            return measured(conn, make_publish(schema), cycles)

        with psycopg.connect(url) as conn:
            version = conn.info.server_version
        print(f"PostgreSQL {version}, {cycles} cycles a round")
        run_case("claim+settle", args.rounds, backlog)
        run_case("empty claim", args.rounds, idle)
        run_case("inbox", args.rounds, consumer)
        run_case("publish", args.rounds, producer)


if __name__ == "__main__":
    main()
