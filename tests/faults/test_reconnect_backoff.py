"""Outage after outage, the relay and the consumer are back within about a second of the
service: the reconnect backoff starts from its base after every successful connection,
instead of growing with every failure since the process started."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest

from outbox_relay.consumer import ConsumerApp, Message
from tests.support.broker import BrokerHelper
from tests.support.consumer import publish, running_consumer
from tests.support.faults import broker_proxy, insert_rows, service_proxy
from tests.support.proxy import TcpProxy
from tests.support.relay import running_relay, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

OUTAGE_S = 2.0
# "About a second", with room for a loaded, shared machine: without the reset, the first
# try after the second or third outage waits up to 8, 16, then 30 s.
RECOVERED_WITHIN_S = 3.0


@contextlib.contextmanager
def down(proxy: TcpProxy, ready: Callable[[], bool]) -> Iterator[None]:
    """The service behind ``proxy`` looks down (connections cut, new ones refused) until
    the block ends; the block starts once the client noticed."""
    proxy.accepting = False
    proxy.cut()
    assert wait_for(lambda: not ready(), timeout_s=20), "the outage went unnoticed"
    yield
    proxy.accepting = True


def recovery_s(ready: Callable[[], bool]) -> float:
    """Seconds until the client is connected again, from now (the service just came back)."""
    back = time.monotonic()
    assert wait_for(ready, timeout_s=60, interval_s=0.02), "not recovered within 60 s"
    return time.monotonic() - back


def test_the_relay_is_back_within_a_second_of_each_of_several_outages(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    recoveries: list[tuple[str, float]] = []
    with (
        broker_proxy(amqp_url) as (amqp, proxied_amqp),
        service_proxy(database_url, 5432) as (pg, proxied_db),
        running_relay(proxied_db, proxied_amqp, schema, poll_interval_s=0.2) as relay,
    ):

        def ready() -> bool:
            return relay.readiness()[0]

        assert wait_for(ready), relay.readiness()
        for n, (service, proxy) in enumerate(
            [("broker", amqp), ("database", pg), ("broker", amqp), ("database", pg)]
        ):
            with down(proxy, ready):
                time.sleep(OUTAGE_S)
            recoveries.append((service, recovery_s(ready)))
            insert_rows(database_url, schema, exchange, range(n * 10, n * 10 + 10))
            assert len(broker.drain(queue, expect=10)) == 10
    assert all(seconds < RECOVERED_WITHIN_S for _, seconds in recoveries), recoveries


def test_the_consumer_is_back_within_a_second_of_each_of_several_outages(
    amqp_url: str, broker: BrokerHelper
) -> None:
    exchange = broker.exchange()
    handled: list[str] = []
    recoveries: list[float] = []
    with broker_proxy(amqp_url) as (proxy, proxied):
        app = ConsumerApp(name="backoff", amqp_url=proxied)

        @app.handler(exchange=exchange, queue=broker.name("backoff"))
        def on_message(message: Message) -> None:
            handled.append(message.message_id)

        with running_consumer(app, broker) as runner:
            for n in range(4):
                with down(proxy, runner.ready.is_set):
                    time.sleep(OUTAGE_S)
                recoveries.append(recovery_s(runner.ready.is_set))
                publish(broker, exchange, "k", b"{}", message_id=f"m{n}")
                assert wait_for(lambda n=n: f"m{n}" in handled), handled
    assert all(seconds < RECOVERED_WITHIN_S for seconds in recoveries), recoveries
