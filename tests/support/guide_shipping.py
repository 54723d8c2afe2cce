"""The consumer guide's async example (docs/consumer.md): an ``async def`` handler that
awaits an asyncio client, writes and publishes in the inbox row's transaction.
tests/integration/test_guide_shipping.py runs it."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from pydantic import BaseModel

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message, Retry

app = ConsumerApp(name="shipping", schema="shipping")


class OrderPaid(BaseModel):
    order_id: int
    postcode: str


class CarrierClient:
    """Stands in for an asyncio client (httpx.AsyncClient, aiohttp) of the carrier's API."""

    async def quote(self, postcode: str) -> int:
        await asyncio.sleep(0.01)  # the network round trip
        if postcode.startswith("ZZ"):
            raise ConnectionError("carrier API unavailable")
        return 499


carrier = CarrierClient()


@app.handler(exchange="orders", queue="shipping.orders", bindings=["order.paid"], timeout=10)
async def ship_order(order: OrderPaid, message: Message, tx: psycopg.AsyncConnection[Any]) -> None:
    """Book the shipment and announce it: the shipment row, the event and the inbox row
    commit together, after the handler returns and before the ack."""
    try:
        price_cents = await carrier.quote(order.postcode)
    except ConnectionError as exc:
        raise Retry(f"carrier: {exc}", delay=10) from exc  # rolled back, tried again later
    cursor = await tx.execute(
        "INSERT INTO shipping.shipments (order_id, price_cents) VALUES (%s, %s) RETURNING id",
        (order.order_id, price_cents),
    )
    row = await cursor.fetchone()
    assert row is not None
    await outbox_relay.publish_async(
        tx,
        exchange="shipping",
        routing_key="shipment.booked",
        payload={"shipment_id": row[0], "order_id": order.order_id},
        partition_key=str(order.order_id),
        schema="shipping",
    )
