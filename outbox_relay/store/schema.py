"""Migrations: apply the files of ``sql/migrations`` to a schema, or print them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from outbox_relay.errors import ConfigurationError
from outbox_relay.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS
from outbox_relay.store.connect import connect, translate_errors
from outbox_relay.store.sqlfiles import (
    MAX_IDENTIFIER_BYTES,
    Migration,
    Queries,
    compose,
    grant_template,
    lock_key,
    migrations,
    validate_schema_name,
)


@dataclass(frozen=True)
class MigrationReport:
    schema: str
    applied: tuple[str, ...]
    already: tuple[str, ...]
    partitions: int


def migrate(
    url: str, *, schema: str, partitions: int = DEFAULT_PARTITIONS, wake_trigger: bool = False
) -> MigrationReport:
    """Apply the missing migrations in one transaction; a second run is a no-op.

    ``partitions`` is fixed by the first run; asking for another count later is refused.
    ``wake_trigger`` (re)creates the optional trigger that wakes a waiting relay on every
    insert, for writers that neither call ``publish`` nor ``outbox_wake()``.
    """
    _check(schema, partitions)
    queries = Queries("migrate", schema=schema)
    bookkeeping, versioned = _split(migrations())
    conn = connect(url, autocommit=False, application_name="outbox-relay migrate")
    with conn, translate_errors(f"migrating schema {schema!r}"), conn.transaction():
        conn.execute(queries["lock"], {"lock_key": lock_key("migrate", schema)})
        conn.execute(compose(bookkeeping.text, schema=schema))
        done = {row[0] for row in conn.execute(queries["applied_versions"]).fetchall()}
        existing = _partition_count(conn, queries, schema) if done else None
        if existing is not None and existing != partitions:
            raise ConfigurationError(
                f"--partitions: schema {schema!r} already has {existing} partitions; the "
                f"count is fixed when the outbox is created (run with --partitions {existing})"
            )
        applied = []
        for migration in versioned:
            if migration.version in done:
                continue
            conn.execute(compose(migration.text, schema=schema, partitions=partitions))
            conn.execute(
                queries["record_version"],
                {"version": migration.version, "name": migration.name},
            )
            applied.append(migration.name)
        if wake_trigger:
            table = sql.Identifier(schema, "outbox").as_string(None)
            present = conn.execute(queries["wake_trigger_exists"], {"table": table}).fetchone()
            if not (present and present[0]):
                conn.execute(queries["create_wake_trigger"])
    already = tuple(m.name for m in versioned if m.version in done)
    return MigrationReport(
        schema=schema, applied=tuple(applied), already=already, partitions=partitions
    )


def migration_sql(
    *,
    schema: str,
    since_version: int = 0,
    partitions: int = DEFAULT_PARTITIONS,
    wake_trigger: bool = False,
) -> str:
    """The DDL of every migration after ``since_version``, with its bookkeeping insert,
    and the optional wake-up trigger last."""
    _check(schema, partitions)
    bookkeeping, versioned = _split(migrations())
    queries = Queries("migrate", schema=schema)
    record = queries["record_version"]
    chunks = [compose(bookkeeping.text, schema=schema).as_string(None).strip()]
    for migration in versioned:
        if migration.version <= since_version:
            continue
        ddl = compose(migration.text, schema=schema, partitions=partitions)
        chunks.append(ddl.as_string(None).strip())
        insert = record.as_string(None) % {
            "version": sql.Literal(migration.version).as_string(None),
            "name": sql.Literal(migration.name).as_string(None),
        }
        chunks.append(insert + ";")
    if wake_trigger:
        chunks.append(queries["wake_trigger"].as_string(None) + ";")
    return "\n\n".join(chunks) + "\n"


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


def _split(found: tuple[Migration, ...]) -> tuple[Migration, tuple[Migration, ...]]:
    return found[0], found[1:]


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
    """Partitions already created in ``schema``, or None before migration 0003."""
    table = sql.Identifier(schema, "outbox_partitions").as_string(None)
    created = conn.execute(queries["partitions_created"], {"table": table}).fetchone()
    if created is None or not created[0]:
        return None
    row = conn.execute(queries["partition_count"]).fetchone()
    return None if row is None else int(row[0])
