"""The consumer guide's handler that raises RateLimited (docs/consumer.md): when the
geocoding API answers 429, the handler pauses in every process for the Retry-After the
API sent; the message is handled after the pause, and no attempt is counted.
tests/integration/test_guide_rate_limits.py runs it in several processes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox_relay.consumer import ConsumerApp, Message, RateLimited

app = ConsumerApp(name="geo")


@dataclass
class Response:
    status: int
    retry_after_s: float = 0.0
    lat: float = 0.0
    lon: float = 0.0


class GeocoderClient:
    """Stands in for the geocoding API's HTTP client: it answers 429 with a Retry-After
    until GUIDE_GEOCODER_BUSY_UNTIL (seconds since the epoch; the test sets it)."""

    def lookup(self, address: str) -> Response:
        busy_until = float(os.environ.get("GUIDE_GEOCODER_BUSY_UNTIL", "0"))
        if time.time() < busy_until:
            return Response(429, retry_after_s=busy_until - time.time())
        return Response(200, lat=52.52, lon=13.40)


geocoder = GeocoderClient()


@app.handler(exchange="customers", queue="geo.addresses", bindings=["address.changed"])
def geocode(message: Message, tx: psycopg.Connection[Any]) -> None:
    answer = geocoder.lookup(message.body["address"])
    if answer.status == 429:
        # Back to the queue unprocessed, no attempt counted; every process of the app
        # waits this long before this handler runs again.
        raise RateLimited(retry_after=answer.retry_after_s)
    tx.execute(
        "INSERT INTO geocoded (customer_id, lat, lon, attempt, at) "
        "VALUES (%s, %s, %s, %s, clock_timestamp())",
        (message.body["customer_id"], answer.lat, answer.lon, message.attempt),
    )
