"""What a schema holds, read from the catalogs, with the schema's name taken out.

Two schemas built by different SQL (the migration chain, the printed baseline) are the
same schema when their snapshots are equal: tables and their persistence, columns in
order with types, defaults, nullability, identity and generation, constraints, indexes,
functions, triggers, sequences, types, comments and privileges, and the rows the DDL
itself inserts (the partitions).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

SCHEMA_MARK = "<schema>"

# Each query takes the schema's name as %(schema)s and returns rows that name their
# object first, so a difference reads as the object that differs.
_QUERIES: dict[str, str] = {
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions, c.relrowsecurity,
               c.relreplident, c.relacl::text, obj_description(c.oid, 'pg_class')
        FROM pg_class c
        WHERE c.relnamespace = %(schema)s::regnamespace
        ORDER BY c.relname
    """,
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               co.collname, a.attacl::text, col_description(c.oid, a.attnum),
               rank() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE c.relnamespace = %(schema)s::regnamespace AND a.attnum > 0
          AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum
    """,
    "information_schema_columns": """
        SELECT table_name, column_name, data_type, column_default, is_nullable,
               is_identity, identity_generation, is_generated, generation_expression,
               character_maximum_length, numeric_precision, datetime_precision
        FROM information_schema.columns
        WHERE table_schema = %(schema)s
        ORDER BY table_name, column_name
    """,
    "constraints": """
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid),
               k.condeferrable, k.condeferred, k.convalidated,
               obj_description(k.oid, 'pg_constraint')
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        WHERE k.connamespace = %(schema)s::regnamespace
        ORDER BY c.relname, k.conname
    """,
    "indexes": """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisunique,
               i.indisprimary
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = %(schema)s::regnamespace
        ORDER BY 1
    """,
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid),
               p.provolatile, p.proparallel, p.prosecdef, p.proconfig, p.proacl::text,
               obj_description(p.oid, 'pg_proc')
        FROM pg_proc p
        WHERE p.pronamespace = %(schema)s::regnamespace
        ORDER BY 1, 2
    """,
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal
        ORDER BY 1, 2
    """,
    "sequences": """
        SELECT c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
               s.seqmax, s.seqmin, s.seqcache, s.seqcycle,
               (SELECT d.refobjid::regclass::text || '.' || d.refobjsubid
                FROM pg_depend d
                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype IN ('a', 'i'))
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        WHERE c.relnamespace = %(schema)s::regnamespace
        ORDER BY 1
    """,
    "types": """
        SELECT t.typname, t.typtype, obj_description(t.oid, 'pg_type')
        FROM pg_type t
        WHERE t.typnamespace = %(schema)s::regnamespace
        ORDER BY 1
    """,
}


def snapshot(url: str, schema: str) -> dict[str, Any]:
    """The catalog entries of ``schema``, its name replaced by ``<schema>``."""
    found: dict[str, Any] = {}
    partitions = sql.SQL(
        "SELECT partition, owner, lease_until, epoch FROM {}.outbox_partitions ORDER BY partition"
    ).format(sql.Identifier(schema))
    with psycopg.connect(url) as conn:
        for name, query in _QUERIES.items():
            rows = conn.execute(query, {"schema": schema}).fetchall()
            found[name] = [tuple(_normalise(value, schema) for value in row) for row in rows]
        found["partition_rows"] = conn.execute(partitions).fetchall()
    return found


def objects(url: str, schema: str) -> set[tuple[str, str]]:
    """(kind, name) of every relation, function and type in ``schema``."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            SELECT 'relation', relname FROM pg_class
            WHERE relnamespace = %(schema)s::regnamespace
            UNION ALL
            SELECT 'function', proname FROM pg_proc
            WHERE pronamespace = %(schema)s::regnamespace
            UNION ALL
            SELECT 'type', typname FROM pg_type
            WHERE typnamespace = %(schema)s::regnamespace
            """,
            {"schema": schema},
        ).fetchall()
    return {(kind, name) for kind, name in rows}


def _normalise(value: object, schema: str) -> object:
    """The schema's name, quoted or not, and its NOTIFY channel, as ``<schema>``."""
    if isinstance(value, str):
        quoted = sql.Identifier(schema).as_string(None)
        return value.replace(quoted, SCHEMA_MARK).replace(schema, SCHEMA_MARK)
    if isinstance(value, list):
        return [_normalise(item, schema) for item in value]
    return value
