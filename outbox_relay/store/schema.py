"""The outbox's schema: create or upgrade it, print its DDL, or remove it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.errors import ConfigurationError, StoreError
from outbox_relay.relay.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS
from outbox_relay.store.connect import connect, translate_errors
from outbox_relay.store.sqlfiles import (
    MAX_IDENTIFIER_BYTES,
    Migration,
    Queries,
    compose,
    ddl,
    grant_template,
    lock_key,
    migrations,
    validate_schema_name,
)


@dataclass(frozen=True)
class MigrationReport:
    """What ``migrate`` did: ``created`` the whole schema, or ``applied`` the migrations
    it lacked (``already`` names those it had); both empty means it was up to date."""

    schema: str
    applied: tuple[str, ...]
    already: tuple[str, ...]
    partitions: int
    created: bool
    version: int


@dataclass(frozen=True)
class DropReport:
    """What ``drop`` removed from ``schema``: tables and functions, by name."""

    schema: str
    tables: tuple[str, ...]
    functions: tuple[str, ...]


def migrate(
    url: str, *, schema: str, partitions: int = DEFAULT_PARTITIONS, wake_trigger: bool = False
) -> MigrationReport:
    """Create the schema, or apply the migrations it lacks, in one transaction; a second
    run is a no-op.

    A schema without an outbox gets ``sql/schema.sql`` and every migration recorded as
    applied (the two build the same catalog). ``partitions`` is fixed by the first run;
    asking for another count later is refused. ``wake_trigger`` (re)creates the optional
    trigger that wakes a waiting relay on every insert, for writers that neither call
    ``publish`` nor ``outbox_wake()``.
    """
    _check(schema, partitions)
    queries = Queries("migrate", schema=schema)
    chain = migrations()
    conn = connect(url, autocommit=False, application_name="outbox-relay migrate")
    with conn, translate_errors(f"migrating schema {schema!r}"), conn.transaction():
        conn.execute(queries["lock"], {"lock_key": lock_key("migrate", schema)})
        done = _applied_versions(conn, queries, schema)
        if done:
            applied = _upgrade(conn, queries, schema, done=done, partitions=partitions)
        else:
            conn.execute(compose(ddl("schema"), schema=schema, partitions=partitions))
            for migration in chain:
                _record(conn, queries, migration)
            applied = []
        if wake_trigger:
            table = sql.Identifier(schema, "outbox").as_string(None)
            present = conn.execute(queries["wake_trigger_exists"], {"table": table}).fetchone()
            if not (present and present[0]):
                conn.execute(queries["create_wake_trigger"])
    return MigrationReport(
        schema=schema,
        applied=tuple(applied),
        already=tuple(m.name for m in chain if m.version in done),
        partitions=partitions,
        created=not done,
        version=max(done | {m.version for m in chain}),
    )


def _upgrade(
    conn: psycopg.Connection[tuple[Any, ...]],
    queries: Queries,
    schema: str,
    *,
    done: set[int],
    partitions: int,
) -> list[str]:
    """Apply, in order, the migrations a schema at versions ``done`` lacks."""
    if _before_baseline(max(done)):
        raise StoreError(
            f"schema {schema!r} is at {_pre_release(max(done))}. Relay or move its rows, "
            f"then run `outbox-relay migrate --drop --schema {schema}` and `outbox-relay "
            "migrate` again"
        )
    existing = _partition_count(conn, queries, schema)
    if existing is not None and existing != partitions:
        raise ConfigurationError(
            f"--partitions: schema {schema!r} already has {existing} partitions; the "
            f"count is fixed when the outbox is created (run with --partitions {existing})"
        )
    applied = []
    for migration in migrations():
        if migration.version not in done:
            conn.execute(compose(migration.text, schema=schema, partitions=partitions))
            _record(conn, queries, migration)
            applied.append(migration.name)
    return applied


def schema_sql(
    *,
    schema: str,
    since_version: int = 0,
    partitions: int = DEFAULT_PARTITIONS,
    wake_trigger: bool = False,
) -> str:
    """The DDL ``outbox-relay migrate`` applies to ``schema``, as text for a migration tool
    (Alembic, Django, Flyway) or a DBA; every statement is idempotent.

    By default the whole schema as it is now, recording every migration as applied. With
    ``since_version``, only the migrations newer than that version, for a schema that has
    it (``SELECT max(version) FROM <schema>.outbox_migrations``). ``wake_trigger`` adds
    the optional trigger that wakes a waiting relay on every insert, last.
    """
    _check(schema, partitions)
    chain = migrations()
    queries = Queries("migrate", schema=schema)
    if since_version:
        if _before_baseline(since_version):
            raise ConfigurationError(
                f"--since-version {since_version}: {_pre_release(since_version)}. Relay or "
                "move the schema's rows, remove it (`outbox-relay sql --drop` prints the "
                "statements) and create it again (`outbox-relay sql`)"
            )
        newer = [m for m in chain if m.version > since_version]
        chunks = [
            compose(m.text, schema=schema, partitions=partitions).as_string(None).strip()
            + "\n\n"
            + _record_statement(queries, m)
            for m in newer
        ]
        if not newer:
            chunks.append(f"-- Nothing to apply: version {since_version} is the newest.")
    else:
        whole = compose(ddl("schema"), schema=schema, partitions=partitions)
        chunks = [whole.as_string(None).strip(), *(_record_statement(queries, m) for m in chain)]
    if wake_trigger:
        chunks.append(queries["wake_trigger"].as_string(None) + ";")
    return "\n\n".join(chunks) + "\n"


def drop_sql(*, schema: str) -> str:
    """The statements that remove what ``migrate`` created in ``schema`` (its tables, with
    every row, and its functions) and nothing else: no CASCADE, and the schema stays."""
    validate_schema_name(schema)
    return compose(ddl("drop"), schema=schema).as_string(None).strip() + "\n"


def drop(url: str, *, schema: str) -> DropReport:
    """Run :func:`drop_sql` in one transaction; a schema without an outbox is left as it is.

    Refused, with nothing dropped, when an object outside the outbox depends on one of its
    tables or functions; the error names the object."""
    text = drop_sql(schema=schema)
    queries = Queries("migrate", schema=schema)
    conn = connect(url, autocommit=False, application_name="outbox-relay migrate --drop")
    action = f"dropping the outbox from schema {schema!r}"
    with conn, translate_errors(action), conn.transaction():
        conn.execute(queries["lock"], {"lock_key": lock_key("migrate", schema)})
        contents = queries["schema_contents"]
        before = set(conn.execute(contents, {"schema": schema}).fetchall())
        try:
            conn.execute(text)
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise StoreError(_dependents_hint(schema, exc)) from exc
        after = set(conn.execute(contents, {"schema": schema}).fetchall())
    gone = sorted(before - after)
    return DropReport(
        schema=schema,
        tables=tuple(name for kind, name in gone if kind == "table"),
        functions=tuple(name for kind, name in gone if kind == "function"),
    )


def grants_sql(
    *,
    schema: str,
    roles: Sequence[tuple[str, str]],
    consumer_apps: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """GRANT statements giving each (kind, role) the least it needs on ``schema``: ``relay``
    its own tables, ``producer`` INSERT on the outbox, ``consumer`` the inbox rows of the
    consumer apps ``consumer_apps[role]`` names (row-level security), and no others."""
    validate_schema_name(schema)
    chunks = []
    for kind, role in roles:
        if not role or len(role.encode("utf-8")) > MAX_IDENTIFIER_BYTES or "\x00" in role:
            raise ValueError(f"role name {role!r} is empty, contains NUL or is too long")
        apps = tuple((consumer_apps or {}).get(role, ())) if kind == "consumer" else ()
        if kind == "consumer":
            _check_apps(role, apps)
        text = compose(grant_template(kind), schema=schema, role=role, apps=apps)
        chunks.append(text.as_string(None).strip())
    return "\n\n".join(chunks) + "\n"


def _applied_versions(
    conn: psycopg.Connection[tuple[Any, ...]], queries: Queries, schema: str
) -> set[int]:
    table = sql.Identifier(schema, "outbox_migrations").as_string(None)
    created = conn.execute(queries["table_exists"], {"table": table}).fetchone()
    if created is None or not created[0]:
        return set()
    return {row[0] for row in conn.execute(queries["applied_versions"]).fetchall()}


def _before_baseline(version: int) -> bool:
    """A schema part-way through the pre-release migrations has none of the chain's
    versions; applying the baseline on top would leave it half changed."""
    return version < migrations()[0].version


def _pre_release(version: int) -> str:
    return (
        f"version {version} comes from a pre-release outbox-relay, and this one's migrations "
        f"start at version {migrations()[0].version}"
    )


def _record(
    conn: psycopg.Connection[tuple[Any, ...]], queries: Queries, migration: Migration
) -> None:
    conn.execute(queries["record_version"], {"version": migration.version, "name": migration.name})


def _record_statement(queries: Queries, migration: Migration) -> str:
    return (
        queries["record_version"].as_string(None)
        % {
            "version": sql.Literal(migration.version).as_string(None),
            "name": sql.Literal(migration.name).as_string(None),
        }
        + ";"
    )


def _dependents_hint(schema: str, exc: psycopg.errors.DependentObjectsStillExist) -> str:
    detail = (exc.diag.message_detail or "").strip().replace("\n", "; ")
    return (
        f"dropping the outbox from schema {schema!r}: {exc.diag.message_primary}"
        + (f" ({detail})" if detail else "")
        + ". Nothing was dropped: outbox-relay never drops objects of yours (no CASCADE); "
        "drop or change them first, then run this again"
    )


def _check_apps(role: str, apps: Sequence[str]) -> None:
    if not apps:
        raise ValueError(
            f"consumer role {role!r}: name the consumer apps (ConsumerApp(name=...)) whose "
            "inbox rows it may use"
        )
    for app in apps:
        if not app or ":" in app or "\x00" in app:
            raise ValueError(
                f"consumer app name {app!r} is empty or contains ':' or NUL; an app name "
                "with ':' would also match the inbox rows of another app"
            )


def _check(schema: str, partitions: int) -> None:
    validate_schema_name(schema)
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigurationError(
            f"--partitions: {partitions} is outside 1..{MAX_PARTITIONS}; a few times the "
            "number of relays you expect is plenty"
        )


def _partition_count(
    conn: psycopg.Connection[tuple[Any, ...]], queries: Queries, schema: str
) -> int | None:
    """Partitions already created in ``schema``, or None when it has no partitions table."""
    table = sql.Identifier(schema, "outbox_partitions").as_string(None)
    created = conn.execute(queries["table_exists"], {"table": table}).fetchone()
    if created is None or not created[0]:
        return None
    row = conn.execute(queries["partition_count"]).fetchone()
    return None if row is None else int(row[0])
