"""What server-side prepared statements save on a direct connection.

Behind a transaction-mode pooler the relay and the consumer turn psycopg's prepared
statements off (see outbox_relay/store/pooler.py); on a direct connection they keep them
if that is measurably faster. This measures it, same run, on the same connections:

- ``claim+settle``: the relay's cycle over a backlog, claim 10 rows and delete them (small
  batches, so planning weighs as much as it can);
- ``empty claim``: a claim that finds nothing and its end (an idle or polling relay);
- ``inbox``: a consumer's handler transaction with nothing else in it (insert, commit).

Each case runs in interleaved rounds, prepared and unprepared alternately; the figure is
the median of the rounds' own ratios (unprepared time / prepared time).

    python -m benchmarks.prepared [--rounds 7] [--cycles 400]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import psycopg

from benchmarks.common import Env, fill_committed, median, outbox_schema
from outbox_relay.store.inbox import HandlerSession
from outbox_relay.store.relay_store import PostgresStore

BATCH = 10
BATCH_BYTES = 8 * 1024 * 1024


def _store(database_url: str, schema: str, *, prepare: bool) -> PostgresStore:
    store = PostgresStore(
        url=database_url, schema=schema, relay_id=uuid.uuid4().hex, lease_ttl_s=30
    )
    store.connect()
    if not prepare:
        for conn in store._idle:
            conn.prepare_threshold = None
    store.heartbeat()
    return store


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


def _session(database_url: str, schema: str, *, prepare: bool) -> HandlerSession:
    session = HandlerSession(url=database_url, schema=schema, application_name="bench")
    session.begin(consumer="bench", message_id=uuid.uuid4().hex)
    session.commit()
    if not prepare:
        session.connection.prepare_threshold = None
    return session


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
            store = _store(url, schema, prepare=prepare)
            try:
                claim_settle(store, 20)  # past psycopg's preparing threshold
                return claim_settle(store, cycles - 20)
            finally:
                store.release_leases()
                store.close()

        def idle(prepare: bool) -> float:
            store = _store(url, schema, prepare=prepare)
            try:
                empty_claim(store, 20)
                return empty_claim(store, cycles)
            finally:
                store.release_leases()
                store.close()

        def consumer(prepare: bool) -> float:
            session = _session(url, schema, prepare=prepare)
            try:
                inbox(session, 20)
                return inbox(session, cycles)
            finally:
                session.close()

        with psycopg.connect(url) as conn:
            version = conn.info.server_version
        print(f"PostgreSQL {version}, {cycles} cycles a round")
        run_case("claim+settle", args.rounds, backlog)
        run_case("empty claim", args.rounds, idle)
        run_case("inbox", args.rounds, consumer)


if __name__ == "__main__":
    main()
