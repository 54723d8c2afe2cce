"""Broker calls of the CLI end with a clear error when RabbitMQ stops answering, instead
of hanging for good (issue 22, item 8). The proxy stalls after the connection is open,
so only the calls' own deadline can end the wait."""

from __future__ import annotations

import time

import pika
import pytest

from outbox_relay.consumer.dead_letter import DeadLetterFilter
from outbox_relay.consumer.parking import ParkingLot
from outbox_relay.errors import BrokerUnavailableError
from outbox_relay.rpc_deadline import close_within, deadline
from outbox_relay.topology.broker import _connect
from outbox_relay.topology.model import QueueSpec, Topology
from tests.support.broker import BrokerHelper
from tests.support.faults import broker_proxy

pytestmark = pytest.mark.integration

SHORT_S = 1.0


def test_a_call_the_broker_never_answers_ends_at_its_deadline(amqp_url: str) -> None:
    with broker_proxy(amqp_url) as (proxy, url):
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        proxy.stalled.set()
        started = time.monotonic()
        with (
            pytest.raises(
                BrokerUnavailableError, match="did not answer within 1 s while declaring"
            ),
            deadline(connection, SHORT_S, "declaring"),
        ):
            channel.queue_declare("outbox_relay_never_answered", passive=True)
        assert time.monotonic() - started >= SHORT_S
        close_within(connection, SHORT_S)  # returns although the broker never answers


def test_a_deadline_that_is_met_changes_nothing(amqp_url: str, broker: BrokerHelper) -> None:
    queue = broker.queue()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        with deadline(connection, SHORT_S, "declaring"):
            connection.channel().queue_declare(queue, passive=True)
        time.sleep(SHORT_S * 1.5)
        connection.process_data_events(time_limit=0.1)  # the cancelled timer stays quiet
        assert connection.is_open
    finally:
        close_within(connection)


def test_topology_plan_gives_up_on_a_silent_broker(amqp_url: str, broker: BrokerHelper) -> None:
    topology = Topology(queues=[QueueSpec(broker.name("silent"))])
    with broker_proxy(amqp_url) as (proxy, url), _connect(url, rpc_timeout_s=SHORT_S) as connected:
        proxy.stalled.set()
        with pytest.raises(BrokerUnavailableError, match="did not answer within 1 s"):
            connected.plan(topology)


def test_dead_letters_give_up_on_a_silent_broker(amqp_url: str, broker: BrokerHelper) -> None:
    lot = broker.queue()
    with (
        broker_proxy(amqp_url) as (proxy, url),
        ParkingLot(url, lot, rpc_timeout_s=SHORT_S) as parking,
    ):
        proxy.stalled.set()
        with pytest.raises(BrokerUnavailableError, match="did not answer within 1 s"):
            parking.browse(DeadLetterFilter(), limit=10)
