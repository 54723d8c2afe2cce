"""The relay store's deadlines against real PostgreSQL, through a proxy that goes silent."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from outbox_relay.errors import StoreUnavailableError
from outbox_relay.store import relay_store
from outbox_relay.store.relay_store import PostgresStore
from tests.support.faults import service_proxy

pytestmark = pytest.mark.integration


def test_a_silent_listen_connection_is_found_by_the_heartbeats_probe(
    database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay only waits on its LISTEN connection while idle; the heartbeat asks it a
    question every LISTEN_PROBE_INTERVAL_S, so its silence is found within the deadline."""
    monkeypatch.setattr(relay_store, "LISTEN_PROBE_INTERVAL_S", 0.0)
    with service_proxy(database_url, 5432) as (proxy, proxied):
        store = PostgresStore(
            url=proxied, schema=schema, relay_id="silent-listen", lease_ttl_s=8, db_timeout_s=1
        )
        store.connect()  # two work connections, then the LISTEN connection
        try:
            store.heartbeat()
            proxy.silence_newest()
            started = time.monotonic()
            with (
                capture_logs() as logs,
                pytest.raises(StoreUnavailableError, match="relay's LISTEN connection"),
            ):
                store.heartbeat()
            assert time.monotonic() - started < 4
        finally:
            store.close()
    warnings = [e for e in logs if e["event"] == "store.no_answer"]
    assert [w["connection"] for w in warnings] == ["LISTEN"]


def test_a_silent_work_connection_fails_the_claim_within_the_deadline(
    database_url: str, schema: str
) -> None:
    with service_proxy(database_url, 5432) as (proxy, proxied):
        store = PostgresStore(
            url=proxied, schema=schema, relay_id="silent-work", lease_ttl_s=8, db_timeout_s=1
        )
        store.connect()
        try:
            store.heartbeat()
            proxy.go_silent()
            started = time.monotonic()
            with capture_logs(), pytest.raises(StoreUnavailableError, match="claiming outbox rows"):
                store.claim(10, 1_000_000)
            assert time.monotonic() - started < 4
        finally:
            store.close()
