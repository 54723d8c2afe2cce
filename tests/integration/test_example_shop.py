"""The compose file's example shop works: orders placed, relayed, invoiced once each."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import psycopg
import pytest

from tests.support.broker import BrokerHelper
from tests.support.consumer import running_consumer
from tests.support.relay import running_relay, wait_for
from tests.support.scripts import load_script

pytestmark = pytest.mark.integration

SHOP = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "shop.py"


def load_shop(schema: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("OUTBOX_RELAY_SCHEMA", schema)
    return load_script(SHOP, f"shop_{schema}", monkeypatch)


def test_orders_are_relayed_and_invoiced_once(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The example's tables are unqualified: keep them in the test's schema.
    separator = "&" if "?" in database_url else "?"
    scoped = f"{database_url}{separator}options={quote(f'-csearch_path={schema}')}"
    monkeypatch.setenv("OUTBOX_RELAY_DATABASE_URL", scoped)
    monkeypatch.setenv("OUTBOX_RELAY_AMQP_URL", amqp_url)
    shop = load_shop(schema, monkeypatch)
    broker.track_exchange(shop.EXCHANGE)
    with psycopg.connect(scoped) as owner:
        shop.create_tables(owner)  # `shop.py setup` also grants; the test's role owns all
    with running_relay(database_url, amqp_url, schema), running_consumer(shop.app, broker):
        shop.produce(count=20, interval_s=0.01)

        def invoices() -> list[tuple[object, ...]]:
            with psycopg.connect(scoped) as conn:
                return conn.execute(
                    "SELECT o.id, o.total, i.total FROM shop_orders o "
                    "LEFT JOIN billing_invoices i ON i.order_id = o.id"
                ).fetchall()

        assert wait_for(lambda: all(row[2] is not None for row in invoices()), timeout_s=30)
    rows = invoices()
    assert len(rows) == 20
    assert all(order_total == invoice_total for _, order_total, invoice_total in rows)
