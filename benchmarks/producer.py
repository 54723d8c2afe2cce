"""Producer cost: 8 clients run a domain transaction (insert an order) plus the outbox row
``publish`` writes, against the same transaction inserting a plain 512 B row into an
ordinary table instead (the ceiling), with pgbench so the client costs nothing.

The outbox statements are the ones ``publish`` sends (``insert_message`` in
``sql/queries/producer.sql``, with ``outbox_wake()`` while it looks at the wake-up flag)
with their parameters filled in as literals. ``publish`` looks at the flag on every
insert while a relay may be waiting, and after it saw the flag down, once per
``FLAG_TRUST_S`` per process; pgbench has no clock, so each client looks whenever its last
look said a relay may wait, and otherwise in one transaction out of ``look_every``: its
transactions in FLAG_TRUST_S at the rate of the same round's ceiling with the relay in the
same state (pgbench clients stand for separate processes; threads of one process would
share their looks and look less).

``publish`` makes each message id in Python and sends it as a parameter. pgbench has
integers only, so the scripts send one and the server turns it into the id with two cheap
functions (a little more than parsing a parameter costs it): a per-client counter for a
time-ordered id (like v7 ids from several processes) or a random number (like v4).

The outbox has no index on the message id (see sql/schema.sql). What one would cost is
measured by putting a unique index back for the cases named "message id index": there a
time-ordered id lands at the right edge of the index, a random one anywhere in it.

Each round starts each run just after a checkpoint, and ratios are taken within a round.

Cases, each against a ceiling where the relay does the same work (on two cores the relay
and the broker take CPU from the producers whatever they write):
- relay busy: it drains a backlog (its wake-up flag down), beside the ceiling's plain rows
  while it drains one; also with the message id index (the two in turns: which one runs
  first alternates between rounds, the ceiling runs before both);
- relay idle at start (flag up when the load starts): the first NOTIFY wakes it and it
  publishes the producers' rows; the ceiling's relay also waits at the start and is woken
  to publish as many messages, committed by another session as the run starts. Also
  reported against plain rows beside a relay that has nothing to do, and how many
  producer transactions sent a NOTIFY;
- no relay; and with the message id index, with time-ordered (v7) and random (v4) ids.
Two references, with no relay: the same ``publish`` with the optional wake-up trigger
installed (``migrate --wake-trigger``, for other writers), the smallest row an outbox
could be (id, message id, exchange, routing key, payload), and rows that set AMQP
properties (correlation id, reply-to, priority) in the column the others leave NULL.
The cores the relay and the broker used are reported for every case with a relay.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from benchmarks.common import (
    PAYLOAD_BYTES,
    ROUTING_KEY,
    Env,
    Figure,
    Report,
    Rounds,
    broker_processes,
    broker_route,
    busy_cores,
    database_server,
    fill,
    fill_committed,
    outbox_schema,
    purge,
    query,
    ratio_target,
    relay_process,
    server_cpu_s,
    wait_empty,
    wait_listening,
)
from outbox_relay.relay.wakeup import FLAG_TRUST_S
from outbox_relay.store.schema import migrate
from outbox_relay.store.sqlfiles import Queries, notify_channel

SCENARIO = "producer"
CLIENTS = 8
# The message id from the integer :mid (see the docstring), and how each kind sets it.
MESSAGE_ID_SQL = "lpad(to_hex(:mid::bigint), 32, '0')::uuid"
UUID7 = f"\\set n :n + 1\n\\set mid :base + :n * {CLIENTS} + :client_id\n"
UUID4 = "\\set mid random(0, 9223372036854775806)\n"
_TPS_RE = re.compile(r"tps = ([\d.]+) \(without initial connection time\)")
_DONE_RE = re.compile(r"number of transactions actually processed: (\d+)")
REAP_S = 0.2  # for the server to reap the run's ended sessions and count their CPU

ORDER = "INSERT INTO {schema}.orders (customer, amount) VALUES (:customer, 42.00);"
PAYLOAD_SQL = f"decode(repeat('78', {PAYLOAD_BYTES}), 'hex')"


def script(body: str, *, prelude: str = "") -> str:
    return f"\\set customer random(1, 100000)\n{prelude}BEGIN;\n{ORDER}\n{body}\nCOMMIT;\n"


def minimal_script(schema: str) -> str:
    insert = (
        "INSERT INTO {schema}.minimal_outbox (message_id, exchange, routing_key, payload)"
        f" VALUES ({MESSAGE_ID_SQL}, 'bench', '{ROUTING_KEY}', {PAYLOAD_SQL});"
    )
    return script(insert, prelude=UUID7).replace("{schema}", schema)


def plain_script(schema: str) -> str:
    return script(f"INSERT INTO {schema}.plain (payload) VALUES ({PAYLOAD_SQL});").replace(
        "{schema}", schema
    )


def outbox_script(
    conn: psycopg.Connection[object],
    schema: str,
    exchange: str,
    ids: str,
    look_every: int,
    *,
    properties: str = "NULL",
) -> str:
    """``publish``'s statements: the insert with the look at the flag while the client's
    last look said a relay may wait (it starts so), else in one of ``look_every``.
    ``ids`` sets the message id (``UUID7`` or ``UUID4``), ``properties`` the optional AMQP
    properties (SQL: NULL, as ``publish`` writes when none is given, or a jsonb literal)."""
    queries = Queries("producer", schema=schema)
    statement = queries["insert_message"].as_string(conn)
    values = {
        "message_id": MESSAGE_ID_SQL,
        "exchange": literal(conn, exchange),
        "routing_key": literal(conn, ROUTING_KEY),
        "payload": PAYLOAD_SQL,
        "content_type": literal(conn, "application/octet-stream"),
        "headers": "'{}'",
        "partition_key": "NULL",
        "delay_s": "0",
        "properties": properties,
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
    prelude = f"{ids}\\set look random(1, {look_every})\n"
    return script(body, prelude=prelude).replace("{schema}", schema_ident(conn, schema))


def look_every(ceiling_tps: float) -> int:
    """A client's transactions in FLAG_TRUST_S at this rate: it looks at one of them."""
    return max(1, round(ceiling_tps / CLIENTS * FLAG_TRUST_S))


def literal(conn: psycopg.Connection[object], value: str) -> str:
    return psycopg.sql.Literal(value).as_string(conn)


def schema_ident(conn: psycopg.Connection[object], schema: str) -> str:
    return psycopg.sql.Identifier(schema).as_string(conn)


def id_base() -> int:
    """Where this run's time-ordered ids start: the milliseconds now times 2**20, so above
    every earlier run's ids, as v7 ids made later are (a run uses far fewer than 2**20
    ids a millisecond of its length)."""
    return time.time_ns() // 1_000_000 << 20


def query_value(
    database_url: str, name: str, schema: str, params: dict[str, object] | None = None
) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query(name, schema), params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def checkpoint(database_url: str) -> None:
    """A checkpoint now, so that none falls inside the next run and each run pays the
    same full-page writes (skipped without the privilege to ask for one)."""
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(query("checkpoint", ""))


@dataclass(frozen=True)
class Run:
    """One pgbench run: its rate (without connection time), its transactions, the whole
    database server's CPU per transaction, and the cores the watched processes used.
    The last two are None when they could not be measured."""

    rate: float
    transactions: int
    database_us_per_tx: float | None
    cores: float | None


def pgbench(
    env: Env,
    text: str,
    seconds: int,
    *,
    at_start: Callable[[], object] | None = None,
    watched: Sequence[psutil.Process] = (),
) -> Run:
    """``CLIENTS`` clients running ``text`` for ``seconds``; ``at_start`` is called once
    pgbench has started."""
    server = database_server(env.database_url)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tx.sql"
        path.write_text(text, encoding="utf-8")
        command = [
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
            "-D",
            "n=0",
            "-D",
            f"base={id_base()}",
            "-f",
            str(path),
            env.database_url,
        ]
        database_before = server_cpu_s(server)
        with (
            busy_cores(watched) as cores,
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ) as child,
        ):
            if at_start is not None:
                at_start()
            stdout, stderr = child.communicate()
        time.sleep(REAP_S)
        database_after = server_cpu_s(server)
    if child.returncode:
        raise RuntimeError(f"pgbench failed ({child.returncode}):\n{stderr[-2000:]}")
    rate, done = _TPS_RE.search(stdout), _DONE_RE.search(stdout)
    if not rate or not done:
        raise RuntimeError(f"pgbench printed no tps:\n{stdout}")
    transactions = int(done.group(1))
    per_tx = None
    if database_before is not None and database_after is not None and transactions:
        per_tx = round((database_after - database_before) / transactions * 1e6, 1)
    return Run(float(rate.group(1)), transactions, per_tx, round(cores[0], 2) if watched else None)


@contextlib.contextmanager
def prepared_schema(env: Env) -> Iterator[str]:
    with outbox_schema(env.database_url) as schema:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            for name in ("orders_table", "plain_table", "minimal_outbox_table"):
                conn.execute(query(name, schema))
        yield schema


CPU_PER_TX = "database server CPU per transaction, "
LOOKS = "transactions per look at the wake-up flag while it is down, "
# (case, the ceiling it is judged against, whether the 0.9 x target applies)
COMPARISONS = (
    ("relay busy", "ceiling, relay busy", True),
    # In both the relay waits when the load starts, then publishes as many messages:
    # the producers' rows, or as many committed elsewhere as the ceiling's run starts.
    ("relay idle at start", "ceiling, relay working", True),
    # The ceiling's plain rows give the relay nothing to do: this ratio includes the CPU
    # the relay and the broker spend publishing on the same two cores.
    ("relay idle at start", "ceiling, relay idle", False),
    ("no relay", "ceiling, no relay", True),
    # What a unique index on the message id would cost (the outbox has none), with
    # the time-ordered ids publish makes and with random ones.
    ("relay busy, message id index", "ceiling, relay busy", False),
    ("no relay, message id index, uuid7", "ceiling, no relay", False),
    ("no relay, message id index, uuid4", "ceiling, no relay", False),
    ("no relay, wake trigger installed", "ceiling, no relay", False),
    ("no relay, minimal outbox row", "ceiling, no relay", False),
    # Rows that set AMQP properties (correlation id, reply-to, priority) in the nullable
    # column the others leave NULL.
    ("no relay, properties set", "ceiling, no relay", False),
)
# What a request/reply producer stores (see outbox_relay/properties.py).
PROPERTIES_SQL = '\'{"correlation_id": "order-42", "reply_to": "replies", "priority": 5}\''


@contextlib.contextmanager
def message_id_index(database_url: str, schema: str) -> Iterator[None]:
    """A unique index on the outbox's message id while the block runs."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(query("create_message_id_index", schema))
        try:
            yield
        finally:
            conn.execute(query("drop_message_id_index", schema))


@contextlib.contextmanager
def notifies_counted(database_url: str, schema: str) -> Iterator[list[int]]:
    """Counts the NOTIFYs producers send while the block runs (a listener of its own)."""
    count = [0]
    failed: list[BaseException] = []
    stop = threading.Event()
    with psycopg.connect(database_url, autocommit=True) as conn:
        channel = psycopg.sql.Identifier(notify_channel(schema))
        conn.execute(psycopg.sql.SQL("LISTEN {}").format(channel))

        def listen() -> None:
            try:
                while not stop.is_set():
                    for _ in conn.notifies(timeout=0.1):
                        count[0] += 1
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        try:
            yield count
        finally:
            stop.set()
            thread.join()
    if failed:
        raise failed[0]


def run(env: Env, report: Report) -> None:
    seconds = 2 if env.quick else 6
    # An even number: the two relay-busy cases take turns at running first.
    rounds = 1 if env.quick else 6
    # The busy relay must still be draining when the third pgbench run ends.
    backlog = env.size(300_000, 30_000)
    measured = Rounds()
    broker = broker_processes()
    cores_of = "cores used by the relay" + (" and the broker" if broker else "")

    def sample(
        case: str,
        text: str,
        *,
        relay: psutil.Process | None = None,
        at_start: Callable[[], object] | None = None,
        checkpoint_first: bool = True,
    ) -> Run:
        """One run of ``case``. The database's CPU is noted only without a relay: the
        relay's own database work would count as the producers'."""
        if checkpoint_first:
            checkpoint(env.database_url)
        watched = [relay, *broker] if relay is not None else []
        result = pgbench(env, text, seconds, at_start=at_start, watched=watched)
        measured.add(case, result.rate)
        if relay is None:
            measured.note(f"{CPU_PER_TX}{case}", result.database_us_per_tx, "us")
        else:
            measured.note(f"{case}: {cores_of}", result.cores, "cores")
        return result

    # Each condition has its own ceiling: on a small machine a busy relay takes CPU from
    # the producers whatever they write, and that is not what the outbox costs them.
    with broker_route(env.amqp_url) as route:
        for measured.round in range(rounds):
            with prepared_schema(env) as schema, psycopg.connect(env.database_url) as conn:
                every = look_every(sample("ceiling, no relay", plain_script(schema)).rate)
                measured.note(LOOKS + "no relay", every, "tx")
                v7 = outbox_script(conn, schema, route.exchange, UUID7, every)
                sample("no relay", v7)
                with message_id_index(env.database_url, schema):
                    sample("no relay, message id index, uuid7", v7)
                    v4 = outbox_script(conn, schema, route.exchange, UUID4, every)
                    sample("no relay, message id index, uuid4", v4)
                sample("no relay, minimal outbox row", minimal_script(schema))
                sample(
                    "no relay, properties set",
                    outbox_script(
                        conn, schema, route.exchange, UUID7, every, properties=PROPERTIES_SQL
                    ),
                )
                migrate(env.database_url, schema=schema, wake_trigger=True)
                sample("no relay, wake trigger installed", v7)
            with prepared_schema(env) as schema, psycopg.connect(env.database_url) as conn:
                fill_committed(
                    env.database_url, schema, route.exchange, backlog, size=PAYLOAD_BYTES
                )
                last_backlog_id = query_value(env.database_url, "max_id", schema)
                with relay_process(env, schema) as relay:
                    # Clients look at the flag as often as they would at the rate they
                    # reach beside a working relay; the relay idle case uses it too.
                    ceiling = sample("ceiling, relay busy", plain_script(schema), relay=relay)
                    working_every = look_every(ceiling.rate)
                    measured.note(LOOKS + "relay working", working_every, "tx")
                    text = outbox_script(conn, schema, route.exchange, UUID7, working_every)
                    for indexed in (False, True) if measured.round % 2 else (True, False):
                        if indexed:
                            with message_id_index(env.database_url, schema):
                                sample("relay busy, message id index", text, relay=relay)
                        else:
                            sample("relay busy", text, relay=relay)
                    left = query_value(
                        env.database_url, "rows_up_to", schema, {"last": last_backlog_id}
                    )
                    # None left: the relay ran out of backlog during the last run.
                    measured.note("relay busy: backlog rows left after its last run", left, "rows")
            purge(env.amqp_url, route.queue)
            with (
                prepared_schema(env) as schema,
                psycopg.connect(env.database_url) as conn,
                relay_process(env, schema) as relay,
            ):
                wait_listening(env.database_url, schema)
                sample("ceiling, relay idle", plain_script(schema), relay=relay)
                wait_listening(env.database_url, schema)
                text = outbox_script(conn, schema, route.exchange, UUID7, working_every)
                with notifies_counted(env.database_url, schema) as notifies:
                    published = sample("relay idle at start", text, relay=relay).transactions
                measured.note(
                    "relay idle at start: NOTIFYs sent",
                    notifies[0] * 1000 / published,
                    "per 1000 tx",
                )
                wait_empty(env.database_url, schema, timeout_s=120)
                # The same work for the relay beside plain rows: as many messages,
                # committed as the run starts, wake it from the same wait. The outbox is
                # vacuumed and the checkpoint taken before they are written, so that,
                # as in the case above, the relay deletes rows on pages written since the
                # checkpoint (no full-page writes) from a table without dead rows.
                with psycopg.connect(env.database_url, autocommit=True) as admin:
                    admin.execute(query("vacuum_outbox", schema))
                wait_listening(env.database_url, schema)
                checkpoint(env.database_url)
                with psycopg.connect(env.database_url) as feeder:
                    fill(feeder, schema, route.exchange, published, size=PAYLOAD_BYTES)
                    sample(
                        "ceiling, relay working",
                        plain_script(schema),
                        relay=relay,
                        at_start=feeder.commit,
                        checkpoint_first=False,
                    )
            purge(env.amqp_url, route.queue)
    reported: set[str] = set()
    for case, ceiling_case, target in COMPARISONS:
        if case not in reported:
            reported.add(case)
            report.add(
                Figure(
                    SCENARIO,
                    f"order + publish, {CLIENTS} clients, {case}",
                    round(statistics.median(measured.rates[case])),
                    "tx/s",
                    ceiling=round(statistics.median(measured.rates[ceiling_case])),
                    extra={
                        "samples": measured.rates[case],
                        "ceiling": ceiling_case,
                        "ceiling_samples": measured.rates[ceiling_case],
                    },
                )
            )
        name = f"{case} / {ceiling_case}"
        ratio = measured.ratio(case, ceiling_case)
        extra = {"round_ratios": measured.ratios(case, ceiling_case)}
        report.add(
            ratio_target(SCENARIO, name, ratio, at_least=0.9, against="ceiling", extra=extra)
            if target
            else Figure(SCENARIO, name, round(ratio, 3), "x", extra=extra)
        )
    for name, values in measured.notes.items():
        rounded = [round(v, 2) for v in values.values()]
        report.add(
            Figure(
                SCENARIO,
                name,
                round(statistics.median(rounded), 2),
                measured.units[name],
                extra={"rounds": rounded},
            )
        )
    cpu_ratio = measured.note_ratio(f"{CPU_PER_TX}no relay", f"{CPU_PER_TX}ceiling, no relay")
    if cpu_ratio is not None:
        report.add(
            Figure(
                SCENARIO,
                "database server CPU per transaction, no relay: outbox row / plain row",
                cpu_ratio,
                "x",
            )
        )
    for name, case, without in (
        (
            "message id index, relay busy: with / without",
            "relay busy, message id index",
            "relay busy",
        ),
        (
            "message id index, no relay: with / without",
            "no relay, message id index, uuid7",
            "no relay",
        ),
        (
            "message id index: uuid4 / uuid7",
            "no relay, message id index, uuid4",
            "no relay, message id index, uuid7",
        ),
    ):
        extra = {"round_ratios": measured.ratios(case, without)}
        report.add(
            Figure(SCENARIO, name, round(measured.ratio(case, without), 3), "x", extra=extra)
        )
