"""Session names the relay gives PostgreSQL."""

from __future__ import annotations

import pytest

from outbox_relay.store.connect import application_name_in
from outbox_relay.store.relay_store import PostgresStore


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql://relay@db/app?application_name=relay-a", "relay-a"),
        ("host=db dbname=app application_name=relay-b", "relay-b"),
        ("postgresql://relay@db/app", None),
        ("postgresql://relay@db:notaport/app", None),
    ],
)
def test_application_name_is_read_from_the_url(url: str, name: str | None) -> None:
    assert application_name_in(url) == name


def test_a_name_in_the_url_wins_over_the_default() -> None:
    def store(url: str) -> PostgresStore:
        return PostgresStore(url=url, schema="s", relay_id="r", lease_ttl_s=8)

    assert store("postgresql://db/app?application_name=mine").application_name == "mine"
    assert store("postgresql://db/app").application_name == "outbox-relay"
