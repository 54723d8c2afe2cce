"""Which database errors send the user to `outbox-relay migrate`, and which do not.

Behind a transaction-mode pooler a server session may lack psycopg's prepared statement
(`prepared statement "_pg3_0" does not exist`): that never means the schema is missing.
"""

from __future__ import annotations

import psycopg
import pytest

from outbox_relay.cli import _store_hint
from outbox_relay.errors import SchemaNotMigratedError, StoreError, StoreUnavailableError
from outbox_relay.store.connect import translate_errors

MIGRATE_ADVICE = "run `outbox-relay migrate"


def translated(error: psycopg.Error, action: str = "claiming outbox rows") -> StoreError:
    with pytest.raises(StoreError) as caught, translate_errors(action):
        raise error
    return caught.value


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.InvalidSqlStatementName('prepared statement "_pg3_0" does not exist'),
        psycopg.errors.DuplicatePreparedStatement('prepared statement "_pg3_0" already exists'),
    ],
)
def test_a_prepared_statement_mixed_up_by_a_pooler_is_no_missing_table(
    error: psycopg.Error,
) -> None:
    exc = translated(error)
    assert not isinstance(exc, (SchemaNotMigratedError, StoreUnavailableError))
    hint = _store_hint(exc)
    assert MIGRATE_ADVICE not in hint
    assert "connection pooler in transaction mode" in hint
    assert '"_pg3_0"' in hint


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.UndefinedTable('relation "s.outbox" does not exist'),
        psycopg.errors.InvalidSchemaName('schema "s" does not exist'),
        psycopg.errors.UndefinedFunction("function s.outbox_partition(bigint) does not exist"),
    ],
)
def test_a_missing_table_schema_or_function_gets_the_migrate_advice(error: psycopg.Error) -> None:
    exc = translated(error)
    assert isinstance(exc, SchemaNotMigratedError)
    assert MIGRATE_ADVICE in _store_hint(exc)


def test_other_errors_naming_the_outbox_get_no_migrate_advice() -> None:
    exc = translated(psycopg.errors.UniqueViolation('duplicate key "outbox_pkey" does not exist'))
    assert MIGRATE_ADVICE not in _store_hint(exc)
