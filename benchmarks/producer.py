"""Producer cost: 8 clients run a domain transaction (insert an order) plus the outbox row
``publish`` writes, against the same transaction inserting a plain 512 B row into an
ordinary table instead (the ceiling), with pgbench so the client costs nothing.

The outbox statements are the ones ``publish`` sends (``insert_message`` in
``sql/queries/producer.sql``, with ``outbox_wake()`` while it looks at the wake-up flag)
with their parameters filled in as literals. ``publish`` looks at the flag on every
insert while a relay may be waiting, and after it saw the flag down, once per
``FLAG_TRUST_S`` per process; pgbench has no clock, so each client looks whenever its last
look said a relay may wait, and otherwise in one transaction out of ``look_every``: its
transactions in FLAG_TRUST_S at the same round's ceiling rate (pgbench clients stand for
separate processes; threads of one process would share their looks and look less).

Cases: the relay busy draining a backlog (its wake-up flag down), the relay idle (flag up
when the load starts), no relay, and the message id index with random (v4) against
time-ordered (v7) UUIDs. Two references, with no relay: the same ``publish`` with the
optional wake-up trigger installed (``migrate --wake-trigger``, for other writers), and
the smallest row an outbox could be (id, message id, exchange, routing key, payload).
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from benchmarks.common import (
    PAYLOAD_BYTES,
    ROUTING_KEY,
    Env,
    Figure,
    Report,
    broker_route,
    fill_committed,
    outbox_schema,
    purge,
    query,
    ratio_figure,
    relay_process,
    wait_listening,
)
from outbox_relay.store.schema import migrate
from outbox_relay.store.sqlfiles import Queries
from outbox_relay.wakeup import FLAG_TRUST_S

SCENARIO = "producer"
CLIENTS = 8
UUID7 = "{schema}.uuid7()"
UUID4 = "gen_random_uuid()"
# Cases that are not the target's: what an option or the smallest possible row costs.
REFERENCES = ("no relay, wake trigger installed", "no relay, minimal outbox row")
_TPS_RE = re.compile(r"tps = ([\d.]+) \(without initial connection time\)")

ORDER = "INSERT INTO {schema}.orders (customer, amount) VALUES (:customer, 42.00);"
PAYLOAD_SQL = f"decode(repeat('78', {PAYLOAD_BYTES}), 'hex')"


def script(body: str, *, prelude: str = "") -> str:
    return f"\\set customer random(1, 100000)\n{prelude}BEGIN;\n{ORDER}\n{body}\nCOMMIT;\n"


def minimal_script(schema: str) -> str:
    insert = (
        "INSERT INTO {schema}.minimal_outbox (message_id, exchange, routing_key, payload)"
        f" VALUES ({UUID7}, 'bench', '{ROUTING_KEY}', {PAYLOAD_SQL});"
    )
    return script(insert).replace("{schema}", schema)


def plain_script(schema: str) -> str:
    return script(f"INSERT INTO {schema}.plain (payload) VALUES ({PAYLOAD_SQL});").replace(
        "{schema}", schema
    )


def outbox_script(
    conn: psycopg.Connection[object], schema: str, exchange: str, uuid_sql: str, look_every: int
) -> str:
    """``publish``'s statements: the insert with the look at the flag while the client's
    last look said a relay may wait (it starts so), else in one of ``look_every``."""
    queries = Queries("producer", schema=schema)
    statement = queries["insert_message"].as_string(conn)
    values = {
        "message_id": uuid_sql.replace("{schema}", schema_ident(conn, schema)),
        "exchange": literal(conn, exchange),
        "routing_key": literal(conn, ROUTING_KEY),
        "payload": PAYLOAD_SQL,
        "content_type": literal(conn, "application/octet-stream"),
        "headers": "'{}'",
        "partition_key": "NULL",
        "delay_s": "0",
    }
    for name, value in values.items():
        statement = statement.replace(f"%({name})s", value)
    insert = " ".join(line.strip() for line in statement.splitlines())
    wake = queries["wake"].as_string(conn).replace("%(wake_scheduled)s", "false")
    body = (
        "\\if :relay_may_wait or :look = 1\n"
        f"WITH inserted AS ({insert}) {wake} \\gset\n"
        "\\else\n"
        f"{insert};\n"
        "\\endif"
    )
    prelude = f"\\set look random(1, {look_every})\n"
    return script(body, prelude=prelude).replace("{schema}", schema_ident(conn, schema))


def look_every(ceiling_tps: float) -> int:
    """A client's transactions in FLAG_TRUST_S at this rate: it looks at one of them."""
    return max(1, round(ceiling_tps / CLIENTS * FLAG_TRUST_S))


def literal(conn: psycopg.Connection[object], value: str) -> str:
    return psycopg.sql.Literal(value).as_string(conn)


def schema_ident(conn: psycopg.Connection[object], schema: str) -> str:
    return psycopg.sql.Identifier(schema).as_string(conn)


def pgbench(env: Env, text: str, seconds: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tx.sql"
        path.write_text(text, encoding="utf-8")
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-c",
                str(CLIENTS),
                "-j",
                "2",
                "-T",
                str(seconds),
                "-M",
                "prepared",
                "-D",
                "relay_may_wait=true",
                "-f",
                str(path),
                env.database_url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode:
        raise RuntimeError(f"pgbench failed ({out.returncode}):\n{out.stderr[-2000:]}")
    match = _TPS_RE.search(out.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{out.stdout}")
    return float(match.group(1))


@contextlib.contextmanager
def prepared_schema(env: Env) -> Iterator[str]:
    with outbox_schema(env.database_url) as schema:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            for name in ("orders_table", "plain_table", "minimal_outbox_table", "uuid7_function"):
                conn.execute(query(name, schema))
        yield schema


def run(env: Env, report: Report) -> None:
    seconds = 2 if env.quick else 8
    rounds = 1 if env.quick else 3
    # The busy relay must still be draining when the second pgbench run ends.
    backlog = env.size(200_000, 20_000)
    rates: dict[str, list[float]] = {}
    looks: list[int] = []  # look_every of each round (no relay)

    def sample(case: str, text: str) -> float:
        rate = pgbench(env, text, seconds)
        rates.setdefault(case, []).append(rate)
        return rate

    # Each condition has its own ceiling: on a small machine a busy relay takes CPU from
    # the producers whatever they write, and that is not what the outbox costs them.
    with broker_route(env.amqp_url) as route:
        for _ in range(rounds):
            with prepared_schema(env) as schema, psycopg.connect(env.database_url) as conn:
                every = look_every(sample("ceiling, no relay", plain_script(schema)))
                looks.append(every)
                v7 = outbox_script(conn, schema, route.exchange, UUID7, every)
                sample("no relay, uuid7", v7)
                v4 = outbox_script(conn, schema, route.exchange, UUID4, every)
                sample("no relay, uuid4", v4)
                sample("no relay, minimal outbox row", minimal_script(schema))
                migrate(env.database_url, schema=schema, wake_trigger=True)
                sample("no relay, wake trigger installed", v7)
            with (
                prepared_schema(env) as schema,
                psycopg.connect(env.database_url) as conn,
                relay_process(env, schema),
            ):
                wait_listening(env.database_url, schema)
                every = look_every(sample("ceiling, relay idle", plain_script(schema)))
                wait_listening(env.database_url, schema)
                sample("relay idle", outbox_script(conn, schema, route.exchange, UUID7, every))
            with prepared_schema(env) as schema, psycopg.connect(env.database_url) as conn:
                fill_committed(
                    env.database_url, schema, route.exchange, backlog, size=PAYLOAD_BYTES
                )
                with relay_process(env, schema):
                    every = look_every(sample("ceiling, relay busy", plain_script(schema)))
                    sample("relay busy", outbox_script(conn, schema, route.exchange, UUID7, every))
            purge(env.amqp_url, route.queue)
    medians = {case: statistics.median(values) for case, values in rates.items()}
    for case, ceiling_case in (
        ("relay busy", "ceiling, relay busy"),
        ("relay idle", "ceiling, relay idle"),
        ("no relay, uuid7", "ceiling, no relay"),
        ("no relay, uuid4", "ceiling, no relay"),
        ("no relay, wake trigger installed", "ceiling, no relay"),
        ("no relay, minimal outbox row", "ceiling, no relay"),
    ):
        ceiling = medians[ceiling_case]
        report.add(
            Figure(
                SCENARIO,
                f"order + publish, {CLIENTS} clients, {case}",
                round(medians[case]),
                "tx/s",
                ceiling=round(ceiling),
                extra={"samples": rates[case], "ceiling_samples": rates[ceiling_case]},
            )
        )
        if case in REFERENCES:
            ratio = round(medians[case] / ceiling, 3)
            report.add(Figure(SCENARIO, f"{case} / ceiling", ratio, "x"))
            continue
        report.add(
            ratio_figure(
                SCENARIO,
                f"{case} / ceiling",
                medians[case],
                ceiling,
                at_least=0.9,
                against="ceiling",
            )
        )
    report.add(
        Figure(
            SCENARIO,
            "publish looks at the wake-up flag in one transaction of (flag down)",
            statistics.median(looks),
            "tx",
            extra={"rounds": looks, "flag_trust_s": FLAG_TRUST_S},
        )
    )
    report.add(
        Figure(
            SCENARIO,
            "message id index: uuid4 / uuid7",
            round(medians["no relay, uuid4"] / medians["no relay, uuid7"], 3),
            "x",
        )
    )
