"""Migrations: apply the files of ``sql/migrations`` to a schema, or print them."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from outbox_relay.store.connect import connect, translate_errors
from outbox_relay.store.sqlfiles import Queries, compose, lock_key, migrations, validate_schema_name


@dataclass(frozen=True)
class MigrationReport:
    schema: str
    applied: tuple[str, ...]
    already: tuple[str, ...]


def migrate(url: str, *, schema: str) -> MigrationReport:
    """Apply the missing migrations in one transaction; a second run is a no-op."""
    validate_schema_name(schema)
    queries = Queries("migrate", schema=schema)
    everything = migrations()
    bookkeeping, versioned = everything[0], everything[1:]
    conn = connect(url, autocommit=False, application_name="outbox-relay migrate")
    with conn, translate_errors(f"migrating schema {schema!r}"), conn.transaction():
        conn.execute(queries["lock"], {"lock_key": lock_key("migrate", schema)})
        conn.execute(compose(bookkeeping.text, schema=schema))
        done = {row[0] for row in conn.execute(queries["applied_versions"]).fetchall()}
        applied = []
        for migration in versioned:
            if migration.version in done:
                continue
            conn.execute(compose(migration.text, schema=schema))
            conn.execute(
                queries["record_version"],
                {"version": migration.version, "name": migration.name},
            )
            applied.append(migration.name)
    already = tuple(m.name for m in versioned if m.version in done)
    return MigrationReport(schema=schema, applied=tuple(applied), already=already)


def migration_sql(*, schema: str, since_version: int = 0) -> str:
    """The DDL of every migration after ``since_version``, with its bookkeeping insert."""
    validate_schema_name(schema)
    everything = migrations()
    bookkeeping, versioned = everything[0], everything[1:]
    record = Queries("migrate", schema=schema)["record_version"]
    chunks = [compose(bookkeeping.text, schema=schema).as_string(None).strip()]
    for migration in versioned:
        if migration.version <= since_version:
            continue
        chunks.append(compose(migration.text, schema=schema).as_string(None).strip())
        insert = record.as_string(None) % {
            "version": sql.Literal(migration.version).as_string(None),
            "name": sql.Literal(migration.name).as_string(None),
        }
        chunks.append(insert + ";")
    return "\n\n".join(chunks) + "\n"


def latest_version() -> int:
    return migrations()[-1].version
