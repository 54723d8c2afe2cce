"""The consumer guide's flow-control example (docs/consumer.md): a handler that calls a
slow outside API with its own concurrency, and which of its failures retry.
tests/integration/test_guide_flow.py runs it."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from pydantic import BaseModel

from outbox_relay.consumer import ConsumerApp

app = ConsumerApp(name="fulfilment", schema="fulfilment", concurrency=4)


class OrderPaid(BaseModel):
    order_id: int
    postcode: str


class CarrierError(Exception):
    """The carrier's API failed (5xx, throttled): worth another try later."""


class AddressRejectedError(CarrierError):
    """The carrier refused the address: no retry will change that."""


class CarrierClient:
    """Stands in for the carrier's HTTP client: slow, and sometimes failing."""

    def label(self, postcode: str) -> str:
        time.sleep(0.05)  # the carrier answers slowly
        if postcode.startswith("ZZ"):
            raise CarrierError("carrier API answered 503")
        if postcode.startswith("XX"):
            raise AddressRejectedError(f"no such postcode: {postcode}")
        return f"LABEL-{postcode}"


carrier = CarrierClient()


@app.handler(
    exchange="orders",
    queue="fulfilment.labels",
    bindings=["order.paid"],
    concurrency=2,  # its own 2 workers: a slow carrier cannot hold up reserve_stock
    retry_on=(CarrierError, TimeoutError),  # only these retry; anything else parks at once
    park_on=AddressRejectedError,  # a CarrierError, but permanent: parked at once
)
def print_label(order: OrderPaid, tx: psycopg.Connection[Any]) -> None:
    label = carrier.label(order.postcode)
    tx.execute(
        "INSERT INTO fulfilment.labels (order_id, label) VALUES (%s, %s)",
        (order.order_id, label),
    )


@app.handler(exchange="orders", queue="fulfilment.stock", bindings=["order.placed"])
def reserve_stock(order: OrderPaid, tx: psycopg.Connection[Any]) -> None:
    """No concurrency=: it shares the app's pool of 4 workers with any other such handler."""
    tx.execute("INSERT INTO fulfilment.reservations (order_id) VALUES (%s)", (order.order_id,))
