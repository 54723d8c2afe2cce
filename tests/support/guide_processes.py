"""Runs a guide module's handlers, as written, under a test's own names: for
``outbox-relay consume tests.support.guide_processes:app`` in several processes.

GUIDE_MODULE: the guide module (its ``app``); GUIDE_PREFIX: put before every exchange
and queue name; OUTBOX_RELAY_SCHEMA: where the inbox and the rate limits are (the test
also puts its tables there, on the search_path of the database URL it passes).
"""

from __future__ import annotations

import importlib
import os

from outbox_relay.consumer import ConsumerApp, Handler

guide: ConsumerApp = importlib.import_module(os.environ["GUIDE_MODULE"]).app
prefix = os.environ["GUIDE_PREFIX"]
app = ConsumerApp(
    name=guide.name,
    schema=os.environ["OUTBOX_RELAY_SCHEMA"],
    concurrency=guide.concurrency,
    prefetch_multiplier=guide.prefetch_multiplier,
)


def key_setting(handler: Handler[...]) -> object:
    key = handler.rate_key
    if key is None:
        return None
    return key.function if key.source == "callable" else f"{key.source}:{key.name}"


for handler in guide.handlers:
    app.handler(
        exchange=f"{prefix}{handler.exchange}",
        queue=f"{prefix}{handler.queue}",
        bindings=handler.bindings,
        max_attempts=handler.max_attempts,
        retry_delays=handler.retry_delays_s,
        timeout=handler.timeout_s,
        name=handler.name,
        rate_limit=handler.rate_limit,
        rate_limit_key=key_setting(handler),  # type: ignore[arg-type]
    )(handler.func)
