"""The SQL in ``sql/``: the schema, its migrations, its removal and named query blocks,
composed with psycopg.sql.

Placeholders in the files are ``{schema}`` (a quoted identifier), ``{channel}`` (a
quoted literal), ``{partitions}`` (an integer literal, where the partitions are created)
and ``{role}`` (a quoted identifier, in the grants).
They are spliced in as :mod:`psycopg.sql` objects, never as text, so a schema name
cannot change the meaning of a statement.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_PLACEHOLDER_RE = re.compile(r"\{(schema|channel|partitions|role|policy|apps)\}")
_MIGRATION_RE = re.compile(r"^(\d{4})_(\w+)\.sql$")
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str


def sql_dir() -> Path:
    """``outbox_relay/sql`` in an installed wheel, the repository's ``sql/`` otherwise."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(
        f"the SQL files are missing: looked in {here / 'sql'} and {here.parent / 'sql'}"
    )


@functools.cache
def queries(group: str) -> dict[str, str]:
    """Named blocks of ``sql/queries/GROUP.sql``."""
    text = (sql_dir() / "queries" / f"{group}.sql").read_text(encoding="utf-8")
    parts = _NAME_RE.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        blocks[name] = "\n".join(lines).strip()
    return blocks


@functools.cache
def ddl(name: str) -> str:
    """``sql/NAME.sql``: ``schema`` (the whole schema as it is now, for a fresh install) or
    ``drop`` (what removes it)."""
    return (sql_dir() / f"{name}.sql").read_text(encoding="utf-8")


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """``sql/migrations``, in version order: the baseline first, then each later change."""
    found = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        match = _MIGRATION_RE.match(path.name)
        if match:
            found.append(
                Migration(int(match.group(1)), path.stem, path.read_text(encoding="utf-8"))
            )
    return tuple(found)


GRANT_KINDS = ("relay", "producer", "consumer")


def grant_template(kind: str) -> str:
    """``sql/grants/KIND.sql``: the least privileges one kind of role needs."""
    if kind not in GRANT_KINDS:
        raise ValueError(f"no grants for {kind!r}; expected one of {', '.join(GRANT_KINDS)}")
    return (sql_dir() / "grants" / f"{kind}.sql").read_text(encoding="utf-8")


def validate_schema_name(schema: str) -> str:
    """A schema name PostgreSQL will store as given; any character is quoted safely."""
    if not schema or "\x00" in schema:
        raise ValueError(f"schema name {schema!r} is empty or contains NUL; choose another name")
    if "$$" in schema:
        raise ValueError(
            f"schema name {schema!r} contains '$$', which would end the function bodies "
            "of the migrations; choose another name"
        )
    if len(schema.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"schema name {schema!r} is longer than {MAX_IDENTIFIER_BYTES} bytes, which "
            "PostgreSQL would truncate; choose a shorter name"
        )
    return schema


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's outbox; always a valid channel name."""
    channel = f"outbox_relay.{schema}"
    if len(channel.encode("utf-8")) <= MAX_IDENTIFIER_BYTES:
        return channel
    return "outbox_relay." + hashlib.blake2b(schema.encode("utf-8"), digest_size=16).hexdigest()


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for a purpose and a schema."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def compose(
    template: str,
    *,
    schema: str,
    partitions: int | None = None,
    role: str | None = None,
    apps: Sequence[str] = (),
) -> sql.Composed:
    """Splice the quoted schema (its NOTIFY channel, the partition count, a quoted role
    name, its inbox policy's name and the condition on the consumer apps it may use)
    into a template."""
    pieces: list[sql.Composable] = []
    position = 0
    for match in _PLACEHOLDER_RE.finditer(template):
        pieces.append(sql.SQL(template[position : match.start()]))
        name = match.group(1)
        if name == "schema":
            pieces.append(sql.Identifier(schema))
        elif name == "channel":
            pieces.append(sql.Literal(notify_channel(schema)))
        elif name in ("role", "policy"):
            if role is None:
                raise ValueError("this SQL needs a role name")
            pieces.append(sql.Identifier(role if name == "role" else inbox_policy_name(role)))
        elif name == "apps":
            if not apps:
                raise ValueError("this SQL needs the consumer apps' names")
            pieces.append(_apps_condition(apps))
        elif partitions is None:
            raise ValueError("this SQL needs the partition count")
        else:
            pieces.append(sql.Literal(partitions))
        position = match.end()
    pieces.append(sql.SQL(template[position:]))
    return sql.Composed(pieces)


def inbox_policy_name(role: str) -> str:
    """The name of ``role``'s row-level security policy on the inbox; always a valid,
    distinct identifier (a long role name is hashed rather than truncated)."""
    name = f"inbox_{role}"
    if len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES:
        return name
    return "inbox_" + hashlib.blake2b(role.encode("utf-8"), digest_size=16).hexdigest()


def _apps_condition(apps: Sequence[str]) -> sql.Composed:
    """True for inbox rows of these apps: their consumer key is "<app name>:<queue>"."""
    tests = [sql.SQL("starts_with(consumer, {})").format(sql.Literal(f"{app}:")) for app in apps]
    return sql.SQL("(") + sql.SQL(" OR ").join(tests) + sql.SQL(")")


class Queries:
    """A query group composed for one schema, cached."""

    def __init__(self, group: str, *, schema: str) -> None:
        self._schema = validate_schema_name(schema)
        self._composed = {
            name: compose(text, schema=schema) for name, text in queries(group).items()
        }
        self._encoded: dict[tuple[str, str], bytes] = {}

    def __getitem__(self, name: str) -> sql.Composed:
        return self._composed[name]

    def encoded(self, name: str, encoding: str) -> bytes:
        """The query as bytes in a connection's ``encoding``, for statements run many
        times a second: psycopg renders a composed query to bytes again on every
        execute, and converting the relay's claim took 68 us a call that way against 39
        us from bytes. Rendered without a connection, which is exact for the quoted
        schema name; a group whose queries splice in literals needs a connection."""
        key = (name, encoding)
        query = self._encoded.get(key)
        if query is None:
            query = self._encoded[key] = self._composed[name].as_string(None).encode(encoding)
        return query
