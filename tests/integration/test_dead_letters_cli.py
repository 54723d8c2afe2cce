"""`outbox-relay dead-letters` on real parked messages: list, show, replay and purge."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner, Result

from outbox_relay.cli import main
from outbox_relay.consumer import ConsumerApp, Message, Reject
from tests.support.broker import BrokerHelper
from tests.support.consumer import publish, running_consumer
from tests.support.relay import wait_for

pytestmark = pytest.mark.integration


def cli(amqp_url: str, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["dead-letters", *args, "--amqp-url", amqp_url], input=stdin)


@dataclass
class Parked:
    """A consumer app whose handler rejects every message until ``fixed`` is set."""

    app: ConsumerApp
    exchange: str
    queue: str
    ids: list[str]
    fixed: bool = False
    handled: list[tuple[str, int]] = field(default_factory=list)

    @property
    def parking(self) -> str:
        return f"{self.queue}.parking"


@pytest.fixture
def parked(amqp_url: str, broker: BrokerHelper) -> Parked:
    """Four messages (keys k.0 .. k.3) parked by a handler that raised Reject."""
    exchange = broker.exchange()
    queue = broker.name("orders")
    # One at a time, so they are parked in the order they were published.
    app = ConsumerApp(name=f"test-{uuid.uuid4().hex[:6]}", amqp_url=amqp_url, concurrency=1)
    state = Parked(app, exchange, queue, [f"m-{n}-{uuid.uuid4().hex[:4]}" for n in range(4)])

    @app.handler(exchange=exchange, queue=queue, bindings=["k.*"])
    def on_order(message: Message) -> None:
        if not state.fixed:
            raise Reject(f"cannot handle {message.body['n']} yet")
        state.handled.append((str(message.message_id), message.attempt))

    with running_consumer(app, broker):
        for n, message_id in enumerate(state.ids):
            body = json.dumps({"n": n}).encode()
            publish(broker, exchange, f"k.{n}", body, message_id=message_id)
        assert wait_for(lambda: broker.depth(state.parking) == 4)
    return state


def listed(amqp_url: str, *args: str) -> list[dict[str, object]]:
    result = cli(amqp_url, "list", *args, "--json")
    assert result.exit_code == 0, result.output
    # The CLI runs in this process, beside a consumer some tests run in a thread: a line
    # that consumer logs while the CLI's output is captured lands in it too.
    lines = [line for line in result.output.splitlines() if " [info     ] consumer." not in line]
    return [json.loads(line) for line in lines]


def test_list_and_show_leave_the_messages_parked_in_order(
    amqp_url: str, broker: BrokerHelper, parked: Parked
) -> None:
    first = listed(amqp_url, parked.parking)
    assert [m["message_id"] for m in first] == parked.ids
    assert first[0]["routing_key"] == "k.0"
    assert first[0]["failed_queue"] == parked.queue
    assert first[0]["error_type"] == "outbox_relay.consumer.errors.Reject"
    assert first[0]["error_message"] == "cannot handle 0 yet"
    assert first[0]["attempts"] == 1
    # by the main queue's name too, and again: nothing consumed, order kept
    assert [m["message_id"] for m in listed(amqp_url, parked.queue)] == parked.ids
    assert broker.depth(parked.parking) == 4

    assert [m["message_id"] for m in listed(amqp_url, parked.queue, "--limit", "2")] == (
        parked.ids[:2]
    )
    picked = listed(amqp_url, parked.queue, "--routing-key", "k.2", "--error-type", "Reject")
    assert [m["message_id"] for m in picked] == [parked.ids[2]]
    text = cli(amqp_url, "list", parked.queue)
    assert text.exit_code == 0
    assert f"{parked.ids[0]}  age=" in text.output
    assert "Reject: cannot handle 0 yet" in text.output

    shown = cli(amqp_url, "show", parked.queue, parked.ids[1])
    assert shown.exit_code == 0, shown.output
    details = json.loads(shown.output)
    assert "Traceback (most recent call last)" in details["error_trace"]
    assert "Reject: cannot handle 1 yet" in details["error_trace"]
    assert "payload" not in details
    with_body = json.loads(cli(amqp_url, "show", parked.queue, parked.ids[1], "--payload").output)
    assert json.loads(with_body["payload"]) == {"n": 1}

    missing = cli(amqp_url, "show", parked.queue, "no-such-id")
    assert missing.exit_code == 1
    assert "no message 'no-such-id'" in missing.output
    assert [m["message_id"] for m in listed(amqp_url, parked.parking)] == parked.ids


def test_replay_brings_messages_back_to_a_handler_that_now_succeeds(
    amqp_url: str, broker: BrokerHelper, parked: Parked
) -> None:
    refused = cli(amqp_url, "replay", parked.queue, stdin="n\n")
    assert refused.exit_code == 1
    assert "Replay all messages of the 4 in" in refused.output
    assert broker.depth(parked.parking) == 4

    parked.fixed = True
    with running_consumer(parked.app, broker):
        one = cli(amqp_url, "replay", parked.queue, "--message-id", parked.ids[0], "--yes")
        assert one.exit_code == 0, one.output
        assert "replayed 1 messages" in one.output
        assert wait_for(lambda: len(parked.handled) == 1)
        assert parked.handled == [(parked.ids[0], 1)]  # a fresh set of attempts
        assert [m["message_id"] for m in listed(amqp_url, parked.queue)] == parked.ids[1:]

        started = time.monotonic()
        rest = cli(amqp_url, "replay", parked.queue, "--rate", "5", stdin="y\n")
        elapsed = time.monotonic() - started
        assert rest.exit_code == 0, rest.output
        assert "replayed 3 messages" in rest.output
        assert elapsed >= 0.3, "3 messages at 5 a second take at least 0.4 s"
        assert wait_for(lambda: len(parked.handled) == 4)
    assert sorted(parked.handled) == sorted((message_id, 1) for message_id in parked.ids)
    assert broker.depth(parked.parking) == 0


def test_purge_asks_then_deletes_what_matches(
    amqp_url: str, broker: BrokerHelper, parked: Parked
) -> None:
    refused = cli(amqp_url, "purge", parked.queue, "--routing-key", "k.1")
    assert refused.exit_code == 1  # no answer: aborted
    assert broker.depth(parked.parking) == 4

    one = cli(amqp_url, "purge", parked.queue, "--routing-key", "k.1", "--yes")
    assert one.exit_code == 0, one.output
    assert "deleted 1 messages" in one.output
    remaining = [parked.ids[0], *parked.ids[2:]]
    assert [m["message_id"] for m in listed(amqp_url, parked.queue)] == remaining

    rest = cli(amqp_url, "purge", parked.parking, "--yes")
    assert "deleted 3 messages" in rest.output
    assert broker.depth(parked.parking) == 0


def test_a_message_whose_queue_is_gone_stays_parked(amqp_url: str, broker: BrokerHelper) -> None:
    parking = broker.queue("gone.parking")
    headers = {
        "outbox-attempt": 3,
        "outbox-error-type": "KeyError",
        "outbox-error-message": "'sku'",
        "outbox-error-trace": "Traceback (most recent call last):\nKeyError: 'sku'\n",
        "outbox-failed-queue": broker.name("never-declared"),
        "outbox-original-routing-key": "order.created",
        "outbox-original-exchange": "orders",
    }
    publish(broker, "", parking, b"{}", message_id="lost?", headers=headers)
    assert wait_for(lambda: broker.depth(parking) == 1)

    shown = json.loads(cli(amqp_url, "show", parking, "lost?").output)
    assert shown["attempts"] == 3
    assert shown["error_trace"].endswith("KeyError: 'sku'\n")

    result = cli(amqp_url, "replay", parking, "--yes")
    assert result.exit_code == 1
    assert "no such queue" in result.output
    assert broker.depth(parking) == 1
    assert [m["message_id"] for m in listed(amqp_url, parking)] == ["lost?"]


def test_a_missing_queue_is_named(amqp_url: str, broker: BrokerHelper) -> None:
    result = cli(amqp_url, "list", broker.name("nothing"))
    assert result.exit_code == 1
    assert f"queue '{broker.name('nothing')}.parking' does not exist" in result.output
