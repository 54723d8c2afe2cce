"""``python -m benchmarks.claim_cost`` (not part of ``all``): what the relay's claim
statement costs per call on the wake-up path, where a claim finds one row, and what each
of its parts adds.

One relay's store (all partitions leased, work settings as the relay applies them) claims
after each single committed row, as at 1k msg/s with one message per transaction. The
statement runs prepared, as the relay runs it, and is timed from its send to its last
row (the BEGIN before it is off the clock). Beside it, interleaved in the same rounds,
the same statement with one part taken out, which no relay could use (each part carries
a guarantee), to price the part:

- the lease: the ``owned`` CTE, its ``FOR SHARE`` and the partition filter (fencing);
- the key hold-back: the ``held`` CTE and its anti-join (per-key order after a failure);
- the byte budget: the window functions over the claimed rows and their sort;

and two floors: the first row by id ``FOR UPDATE SKIP LOCKED`` (the naive claim) and a
round trip that reads nothing. Medians per round; the round's ratio to the statement.
``--explain`` prints the statement's plan with ANALYZE and BUFFERS once at the end.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

import outbox_relay
from benchmarks.common import ROUTING_KEY, Env, outbox_schema, payload
from outbox_relay.store.relay_store import PostgresStore
from outbox_relay.store.sqlfiles import compose, queries

LIMIT = 4000  # the relay's default batch size: a claim asks for it and finds one row
MAX_BYTES = 8 * 1024 * 1024
WARM_UP = 20  # calls per case before timing: psycopg prepares at the sixth


def variants() -> dict[str, str]:
    """The statement and its variants; a variant that fails to take its part out (the
    statement changed) raises."""
    full = queries("relay")["claim_batch"]
    cut = {
        "without the lease (owned CTE, FOR SHARE, partition filter)": full.replace(
            "WHERE {schema}.outbox_partition(o.id, o.partition_key, %(partitions)s)\n"
            "          = ANY (ARRAY(SELECT partition FROM owned))\n      AND",
            "WHERE",
        ),
        "without FOR SHARE of the leases": full.replace("    FOR SHARE\n", ""),
        "without the key hold-back": re.sub(
            r"      AND NOT EXISTS \(.*?\n      \)\n", "", full, count=1, flags=re.S
        ),
        "without the byte budget (window and sort)": full[: full.index("SELECT id, message_id")]
        + "SELECT *, 1::bigint AS locked FROM claimed",
    }
    for name, text in cut.items():
        if text == full:
            raise AssertionError(f"claim_batch changed: cannot measure it {name}")
    return {
        "claim_batch": full,
        **cut,
        "floor: first row by id, FOR UPDATE SKIP LOCKED": (
            "SELECT id, message_id, exchange, routing_key, payload, content_type "
            "FROM {schema}.outbox ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
        ),
        "floor: a round trip reading nothing": "SELECT 1 WHERE %(limit)s > 0",
    }


def measure(env: Env, *, rounds: int, calls: int, explain: bool) -> dict[str, list[float]]:
    """Per case, the median milliseconds of each round."""
    cases = variants()
    medians: dict[str, list[float]] = {name: [] for name in cases}
    with outbox_schema(env.database_url) as schema:
        store = PostgresStore(url=env.database_url, schema=schema, relay_id="cost", lease_ttl_s=60)
        store.connect()
        try:
            store.heartbeat()
            conn = store.work_connections()[0]  # configured as the relay's
            params = store.claim_parameters(LIMIT, MAX_BYTES)  # the relay's own
            statements = {name: compose(text, schema=schema) for name, text in cases.items()}
            empty = compose("DELETE FROM {schema}.outbox", schema=schema)
            with psycopg.connect(env.database_url) as producer:
                for _ in range(rounds):
                    times: dict[str, list[float]] = {name: [] for name in cases}
                    for i in range(WARM_UP + calls):
                        for name, statement in statements.items():
                            _one_row(producer, schema, i)
                            conn.execute("SELECT 1")  # the BEGIN, off the clock
                            started = time.perf_counter()
                            conn.execute(statement, params, prepare=True).fetchall()
                            if i >= WARM_UP:
                                times[name].append((time.perf_counter() - started) * 1000)
                            conn.execute(empty)
                            conn.commit()
                    store.heartbeat()
                    for name, values in times.items():
                        medians[name].append(statistics.median(values))
                if explain:
                    _one_row(producer, schema, 0)
                    plan = conn.execute(
                        sql.SQL("EXPLAIN (ANALYZE, BUFFERS, SETTINGS) ")
                        + statements["claim_batch"],
                        params,
                    ).fetchall()
                    conn.rollback()
                    print("\n".join(row[0] for row in plan))
        finally:
            store.close()
    return medians


def _one_row(conn: psycopg.Connection[Any], schema: str, i: int) -> None:
    outbox_relay.publish(
        conn,
        exchange="bench",
        routing_key=ROUTING_KEY,
        payload=payload(seq=i),
        content_type="application/octet-stream",
        partition_key=f"k{i % 100}",
        schema=schema,
    )
    conn.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claim_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per case and round")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args(argv)
    env = Env.from_environment(quick=False)
    medians = measure(env, rounds=args.rounds, calls=args.calls, explain=args.explain)
    full = medians["claim_batch"]
    print(f"\n{args.rounds} rounds of {args.calls} calls per case, one row per claim")
    print("| case | median ms | / claim_batch (median of rounds) |\n|---|---|---|")
    for name, values in medians.items():
        ratio = statistics.median(v / f for v, f in zip(values, full, strict=True))
        print(f"| {name} | {statistics.median(values):.3f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
