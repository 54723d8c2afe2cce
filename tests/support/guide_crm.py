"""The consumer guide's per-tenant limit (docs/consumer.md): the CRM allows each tenant
5 calls a second, so each tenant gets its own bucket and one busy tenant cannot hold the
others back. tests/integration/test_guide_rate_limits.py runs it in several processes."""

from __future__ import annotations

from typing import Any

import psycopg

from outbox_relay.consumer import ConsumerApp, Message

app = ConsumerApp(name="crm-sync", prefetch_multiplier=20)  # room for several tenants


@app.handler(
    exchange="customers",
    queue="crm.customers",
    bindings=["customer.#"],
    rate_limit="5/s",
    rate_limit_key="header:tenant",  # messages without the header share one bucket
)
def sync_customer(message: Message, tx: psycopg.Connection[Any]) -> None:
    tx.execute(
        "INSERT INTO crm_calls (tenant, customer_id, called_at) VALUES (%s, %s, clock_timestamp())",
        (message.headers.get("tenant"), message.body["customer_id"]),
    )
