"""The topology against a real RabbitMQ: idempotent apply, retry tiers that come back to
their own queue only, parking lots, alternate exchanges, explained conflicts."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import psycopg
import pytest
from click.testing import CliRunner

import outbox_relay
from outbox_relay.cli import main
from outbox_relay.errors import BrokerUnavailableError
from outbox_relay.topology import (
    Action,
    Binding,
    ExchangeSpec,
    QueueSpec,
    QueueType,
    RetryPolicy,
    Topology,
    TopologyConflictError,
    apply,
    load_topology,
    plan,
)
from tests.support.broker import BrokerHelper
from tests.support.relay import one_batch

pytestmark = pytest.mark.integration

TIER_S = 1.0
# A tier's message expires at the head of its queue after the TTL; RabbitMQ checks
# promptly, so it is back well within this.
TIER_SLACK_S = 2.0


def tracked(broker: BrokerHelper, topology: Topology) -> Topology:
    """Register every object ``topology`` can declare, derived queues included, for cleanup."""
    for exchange in topology.exchanges:
        broker.track_exchange(exchange.name)
    for queue in topology.queues:
        for declared in queue.declarations():
            broker.track_queue(declared.name)
    return topology


def exists(broker: BrokerHelper, kind: str, name: str) -> bool:
    channel = broker._conn.channel()  # a throwaway channel: a 404 closes it
    try:
        if kind == "queue":
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    channel.close()
    return True


def orders_topology(broker: BrokerHelper, kind: QueueType = QueueType.CLASSIC) -> Topology:
    """An exchange with an alternate exchange, two queues bound to the same key."""
    orders, lost = broker.name("orders"), broker.name("unroutable")
    retry = RetryPolicy(delays_ms=(int(TIER_S * 1000),), max_attempts=2)
    return tracked(
        broker,
        Topology(
            exchanges=[
                ExchangeSpec(orders, alternate_exchange=lost),
                ExchangeSpec(lost, type="fanout"),
            ],
            queues=[
                QueueSpec(broker.name("billing"), kind, (Binding(orders, "order.*"),), retry),
                QueueSpec(broker.name("shipping"), kind, (Binding(orders, "order.*"),), retry),
                QueueSpec(broker.name("lost"), bindings=(Binding(lost),)),
            ],
        ),
    )


def publish(broker: BrokerHelper, exchange: str, routing_key: str, body: bytes) -> None:
    broker.channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(delivery_mode=2))


def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class TestApply:
    def test_applying_twice_changes_nothing_the_second_time(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        topology = orders_topology(broker, QueueType.QUORUM)
        first = apply(amqp_url, topology)
        assert not first.up_to_date
        names = {item.name for item in first.created}
        assert names == {e.name for e in topology.exchanges} | {
            d.name for q in topology.queues for d in q.declarations()
        }
        assert all(exists(broker, item.kind, item.name) for item in first.created)

        second = apply(amqp_url, topology)
        assert second.up_to_date
        assert second.created == ()
        assert {item.name for item in second.matched} == names
        assert "is up to date" in second.render()

    def test_plan_changes_nothing(self, amqp_url: str, broker: BrokerHelper) -> None:
        topology = orders_topology(broker)
        result = plan(amqp_url, topology)
        assert result.ok
        assert {i.action for i in result.items} == {Action.CREATE, Action.BIND}
        assert not any(exists(broker, i.kind, i.name) for i in result.having(Action.CREATE))

        apply(amqp_url, topology)
        again = plan(amqp_url, topology)
        assert again.up_to_date
        assert not again.having(Action.CREATE, Action.CONFLICT)

    def test_checks_do_not_log_the_refusals_they_provoke(
        self, amqp_url: str, broker: BrokerHelper, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="pika.channel")
        existing = broker.queue("billing")  # a 406 for the equivalence check
        absent = broker.name("absent")  # a 404 for the existence check
        topology = Topology(queues=[QueueSpec(existing, QueueType.QUORUM), QueueSpec(absent)])

        result = plan(amqp_url, topology)
        assert [i.action for i in result.items] == [Action.CONFLICT, Action.CREATE]
        assert not [r for r in caplog.records if "remote Channel.Close" in r.getMessage()]

        # pika's own warnings are back once the check is over
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            broker._conn.channel().queue_declare(absent, passive=True)
        assert [r for r in caplog.records if "remote Channel.Close (404)" in r.getMessage()]

    def test_cli_apply_twice_reports_up_to_date(
        self, amqp_url: str, broker: BrokerHelper, tmp_path: Path
    ) -> None:
        queue = broker.name("billing")
        tracked(broker, Topology(queues=[QueueSpec(queue, retry=RetryPolicy((1000,), 2))]))
        broker.track_exchange(broker.name("orders"))
        path = tmp_path / "topology.toml"
        path.write_text(
            f'[[exchanges]]\nname = "{broker.name("orders")}"\n'
            f'[[queues]]\nname = "{queue}"\n'
            f'bindings = [{{ exchange = "{broker.name("orders")}", routing_key = "a.*" }}]\n'
            '[queues.retry]\ndelays = ["1s"]\nmax_attempts = 2\n'
        )
        args = ["topology", "apply", str(path), "--amqp-url", amqp_url]
        first = CliRunner().invoke(main, args)
        assert first.exit_code == 0, first.output
        assert f"created queue '{queue}.retry.1s'" in first.output
        second = CliRunner().invoke(main, args)
        assert second.exit_code == 0, second.output
        assert "is up to date: 4 exchanges and queues already match" in second.output


@pytest.fixture(params=[QueueType.CLASSIC, QueueType.QUORUM], ids=lambda kind: kind.value)
def applied(request: pytest.FixtureRequest, amqp_url: str, broker: BrokerHelper) -> Topology:
    """``orders_topology`` applied, once with classic and once with quorum queues."""
    topology = orders_topology(broker, request.param)
    apply(amqp_url, topology)
    return topology


class TestRetryTiers:
    def test_a_delayed_message_returns_to_its_own_queue_only_after_the_delay(
        self, broker: BrokerHelper, applied: Topology
    ) -> None:
        topology = applied
        billing, shipping = topology.queues[0], topology.queues[1]
        tier = billing.retry_queue_for(1)
        assert tier is not None

        # What the consumer SDK does on a failure: republish to the tier by name.
        start = time.monotonic()
        publish(broker, "", tier, b"retry me")
        got = broker.drain(billing.name, expect=1, timeout_s=TIER_S + TIER_SLACK_S + 5)
        elapsed = time.monotonic() - start

        assert [m.body for m in got] == [b"retry me"]
        assert TIER_S * 0.9 <= elapsed <= TIER_S + TIER_SLACK_S
        assert got[0].routing_key == billing.name  # back through the default exchange
        assert broker.depth(shipping.name) == 0  # the other subscriber never sees a retry
        assert broker.depth(topology.queues[2].name) == 0  # nor the alternate exchange
        assert broker.depth(tier) == 0


class TestParkingLot:
    def test_a_rejected_message_lands_in_the_parking_lot(
        self, broker: BrokerHelper, applied: Topology
    ) -> None:
        topology = applied
        billing = topology.queues[0]
        publish(broker, topology.exchanges[0].name, "order.created", b"poison")
        assert until(lambda: broker.depth(billing.name) == 1)

        method, _props, body = broker.channel.basic_get(billing.name, auto_ack=False)
        assert body == b"poison"
        broker.channel.basic_reject(method.delivery_tag, requeue=False)

        parking = billing.parking_queue_name()
        assert parking is not None
        assert [m.body for m in broker.drain(parking, expect=1)] == [b"poison"]
        assert broker.depth(billing.name) == 0

    def test_a_quorum_delivery_limit_lands_in_the_parking_lot(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        topology = orders_topology(broker, QueueType.QUORUM)
        apply(amqp_url, topology)
        billing = topology.queues[0]
        limit = billing.effective_delivery_limit()
        assert limit == 2
        parking = billing.parking_queue_name()
        assert parking is not None
        publish(broker, topology.exchanges[0].name, "order.created", b"crash loop")
        assert until(lambda: broker.depth(billing.name) == 1)

        deliveries = 0
        for _ in range(limit + 3):  # a consumer that dies with the message, again and again
            method, _props, _body = broker.channel.basic_get(billing.name, auto_ack=False)
            if method is None:
                break
            deliveries += 1
            broker.channel.basic_nack(method.delivery_tag, requeue=True)
            # nack is asynchronous: wait until the broker settled it one way or the other
            until(lambda: broker.depth(billing.name) == 1 or broker.depth(parking) == 1)

        assert [m.body for m in broker.drain(parking, expect=1)] == [b"crash loop"]
        assert deliveries == limit + 1
        assert broker.depth(billing.name) == 0


class TestAlternateExchange:
    def test_an_unroutable_message_reaches_the_alternate_exchanges_queue(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        topology = orders_topology(broker)
        apply(amqp_url, topology)
        publish(broker, topology.exchanges[0].name, "invoice.paid", b"nobody listens")
        lost = topology.queues[2].name
        assert [m.body for m in broker.drain(lost, expect=1)] == [b"nobody listens"]
        assert broker.depth(topology.queues[0].name) == 0


class TestConflicts:
    def test_an_existing_queue_with_other_arguments_is_explained_and_nothing_applied(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        existing = broker.queue("billing", **{"x-message-ttl": 60_000})
        topology = tracked(
            broker,
            Topology(
                exchanges=[ExchangeSpec(broker.name("orders"))],
                queues=[
                    QueueSpec(existing, QueueType.QUORUM, retry=RetryPolicy((1000,), 3)),
                ],
            ),
        )
        with pytest.raises(TopologyConflictError) as info:
            apply(amqp_url, topology)

        text = str(info.value)
        assert text.startswith("nothing was applied:")
        assert f"queue '{existing}' on vhost '/' already exists with other arguments:" in text
        assert "  - x-queue-type: exists as (not set), the topology asks for 'quorum'" in text
        assert "  - x-message-ttl: exists as '60000', the topology asks for (not set)" in text
        assert (
            f"  - x-dead-letter-routing-key: exists as (not set), the topology asks for "
            f"'{existing}.parking'" in text
        )
        assert "it is empty: stop its consumers, delete it" in text
        # Checked before declaring: not even the exchange or the derived queues exist.
        assert not exists(broker, "exchange", broker.name("orders"))
        assert not exists(broker, "queue", f"{existing}.parking")
        assert not exists(broker, "queue", f"{existing}.retry.1s")
        assert exists(broker, "queue", existing)  # and the queue is untouched
        conflict = info.value.plan.having(Action.CONFLICT)
        assert [item.name for item in conflict] == [existing]

    def test_a_queue_holding_messages_says_so(self, amqp_url: str, broker: BrokerHelper) -> None:
        existing = broker.queue("busy")
        publish(broker, "", existing, b"keep me")
        assert until(lambda: broker.depth(existing) == 1)
        topology = Topology(queues=[QueueSpec(existing, QueueType.QUORUM)])
        item = plan(amqp_url, topology).having(Action.CONFLICT)[0]
        assert "it holds 1 messages: drain it first" in item.note
        assert broker.depth(existing) == 1

    def test_an_existing_exchange_of_another_type_is_explained(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        existing = broker.exchange("orders", kind="direct")
        result = plan(amqp_url, Topology(exchanges=[ExchangeSpec(existing)]))
        assert not result.ok
        note = result.having(Action.CONFLICT)[0].note
        assert "  - type: exists as 'direct', the topology asks for 'topic'" in note
        assert "delete exchange" in note

    def test_the_cli_exits_1_and_prints_the_explanation(
        self, amqp_url: str, broker: BrokerHelper, tmp_path: Path
    ) -> None:
        existing = broker.queue("billing")
        path = tmp_path / "topology.toml"
        path.write_text(f'[[queues]]\nname = "{existing}"\ntype = "quorum"\n')
        result = CliRunner().invoke(main, ["topology", "plan", str(path), "--amqp-url", amqp_url])
        assert result.exit_code == 1
        assert "conflict  queue" in result.output
        assert "x-queue-type: exists as (not set), the topology asks for 'quorum'" in result.output


class TestBrokerUnavailable:
    def test_an_unreachable_broker_is_named_without_its_password(self) -> None:
        with pytest.raises(BrokerUnavailableError) as info:
            plan("amqp://guest:secret@127.0.0.1:1/%2F", Topology(queues=[QueueSpec("q")]))
        assert "cannot connect to amqp://guest:***@127.0.0.1:1/%2F" in str(info.value)
        assert "secret" not in str(info.value)


class TestBadInput:
    def test_a_binding_to_an_exchange_nobody_declared_stops_before_declaring(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        queue = broker.name("billing")
        topology = tracked(
            broker,
            Topology(
                queues=[QueueSpec(queue, bindings=(Binding(broker.name("nowhere")),))],
                source="topology.toml",
            ),
        )
        with pytest.raises(TopologyConflictError) as info:
            apply(amqp_url, topology)
        assert (
            f"topology.toml: queues[0].bindings[0].exchange names exchange "
            f"'{broker.name('nowhere')}', which the topology does not declare and vhost '/' "
            "does not have: declare it under [[exchanges]] or correct the name"
        ) in str(info.value)
        assert not exists(broker, "queue", queue)

    def test_a_binding_to_an_exchange_the_broker_has_is_fine(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        exchange = broker.exchange("existing")
        queue = broker.name("billing")
        tracked(broker, Topology(queues=[QueueSpec(queue)]))
        apply(amqp_url, Topology(queues=[QueueSpec(queue, bindings=(Binding(exchange, "a"),))]))
        publish(broker, exchange, "a", b"routed")
        assert [m.body for m in broker.drain(queue, expect=1)] == [b"routed"]

    @pytest.mark.parametrize(
        ("replace", "by", "expected"),
        [
            ("max_attempts = 2", "max_attempts = 2\nmax_tries = 3", "unknown key 'max_tries'"),
            ('type = "quorum"', "type = true", "expected a string"),
            ('"1s"', '"0s"', "is not positive"),
            ("[[queues]]", '[[exchanges]]\nname = "{x}"\n[[queues]]', "declared twice"),
        ],
    )
    def test_the_cli_refuses_a_bad_file_before_declaring_anything(
        self,
        amqp_url: str,
        broker: BrokerHelper,
        tmp_path: Path,
        replace: str,
        by: str,
        expected: str,
    ) -> None:
        exchange, queue = broker.name("orders"), broker.name("billing")
        broker.track_exchange(exchange)
        tracked(broker, Topology(queues=[QueueSpec(queue, retry=RetryPolicy((1000,), 2))]))
        good = (
            f'[[exchanges]]\nname = "{exchange}"\n'
            f'[[queues]]\nname = "{queue}"\ntype = "quorum"\n'
            '[queues.retry]\ndelays = ["1s"]\nmax_attempts = 2\n'
        )
        path = tmp_path / "topology.toml"
        path.write_text(good.replace(replace, by.replace("{x}", exchange)))
        result = CliRunner().invoke(main, ["topology", "apply", str(path), "--amqp-url", amqp_url])
        assert result.exit_code == 2, result.output
        assert str(path) in result.output
        assert expected in result.output
        assert not exists(broker, "exchange", exchange)
        assert not exists(broker, "queue", queue)


class TestPriorityQueues:
    def test_urgent_work_declared_from_the_file_overtakes_bulk_work(
        self, amqp_url: str, database_url: str, schema: str, broker: BrokerHelper, tmp_path: Path
    ) -> None:
        exchange, queue = broker.name("jobs"), broker.name("emails")
        path = tmp_path / "topology.toml"
        path.write_text(
            f'[[exchanges]]\nname = "{exchange}"\n\n'
            f'[[queues]]\nname = "{queue}"\nmax_priority = 10\n'
            f'bindings = [{{ exchange = "{exchange}", routing_key = "email.*" }}]\n'
        )
        apply(amqp_url, tracked(broker, load_topology(path)))
        priorities = [1, 9, 1, 1, 9, 1, 9, 1]
        with psycopg.connect(database_url) as conn:
            for n, priority in enumerate(priorities):
                outbox_relay.publish(
                    conn,
                    exchange=exchange,
                    routing_key="email.send",
                    payload={"n": n},
                    priority=priority,
                    schema=schema,
                )
            conn.commit()
        one_batch(database_url, amqp_url, schema)  # all enqueued before anyone consumes
        assert until(lambda: broker.depth(queue) == len(priorities))

        received = broker.drain(queue, expect=len(priorities))
        got = [(r.properties.priority, json.loads(r.body)["n"]) for r in received]
        assert got == [(9, 1), (9, 4), (9, 6), (1, 0), (1, 2), (1, 3), (1, 5), (1, 7)]

    def test_an_existing_queue_with_another_max_priority_is_a_conflict(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        existing = broker.queue("emails", **{"x-max-priority": 5})
        topology = Topology(queues=[QueueSpec(existing, max_priority=10)])
        with pytest.raises(TopologyConflictError) as info:
            apply(amqp_url, topology)
        text = str(info.value)
        assert "  - x-max-priority: exists as '5', the topology asks for '10'" in text
        assert "it is empty: stop its consumers, delete it" in text

    def test_more_priority_levels_than_recommended_are_warned_about(
        self, amqp_url: str, broker: BrokerHelper
    ) -> None:
        topology = tracked(broker, Topology(queues=[QueueSpec(broker.name("p"), max_priority=50)]))
        report = apply(amqp_url, topology)
        assert any("max_priority = 50 is above the 10" in w for w in report.warnings)
