"""Checks of settings objects, shared by the relay's and the consumer's: each failure is a
:class:`~outbox_relay.errors.ConfigurationError` whose message names the fix, raised
before anything connects."""

from __future__ import annotations

from collections.abc import Iterable

from outbox_relay.errors import ConfigurationError
from outbox_relay.store.sqlfiles import validate_schema_name


def require(checks: Iterable[tuple[bool, str]], *, where: str = "") -> None:
    """Raise ConfigurationError with the message of the first check that failed, after
    ``where: `` when given."""
    for ok, message in checks:
        if not ok:
            raise ConfigurationError(f"{where}: {message}" if where else message)


def require_schema_name(schema: str, *, label: str) -> None:
    """Raise ConfigurationError ``label: why`` unless ``schema`` can name a schema."""
    try:
        validate_schema_name(schema)
    except ValueError as exc:
        raise ConfigurationError(f"{label}: {exc}") from exc
