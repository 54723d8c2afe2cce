"""The testing helper without a database: what the consumer would do with a message."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pydantic
import pytest

from outbox_relay.consumer import ConsumerApp, Message, RateLimited, Reject, Retry
from outbox_relay.consumer.testing import Action, make_message, run
from outbox_relay.errors import ConfigurationError
from tests.support.properties import HANDLER_PROPERTIES

app = ConsumerApp(name="shipping")


class Parcel(pydantic.BaseModel):
    parcel_id: int
    weight_g: int


shipped: list[tuple[Parcel, str]] = []


@app.handler(
    exchange="orders",
    queue="shipping.parcels",
    bindings=["parcel.ready"],
    retry_delays=[1, 10],
    max_attempts=3,
)
def on_parcel(parcel: Parcel, message: Message) -> None:
    if parcel.weight_g > 30_000:
        raise Reject(f"parcel {parcel.parcel_id} is over 30 kg")
    if parcel.weight_g == 0:
        raise Retry("the scale is not ready", delay=5)
    if parcel.weight_g < 0:
        raise RuntimeError("negative weight")
    if parcel.weight_g == 429:
        raise RateLimited(retry_after=30)
    shipped.append((parcel, message.routing_key))


@app.handler(exchange="orders", queue="shipping.ledger")
def on_ledger(message: Message, tx: Any) -> None:
    pass


@pytest.fixture(autouse=True)
def _clear() -> None:
    shipped.clear()


def test_a_handled_message_is_acked_and_reaches_the_handler_typed() -> None:
    outcome = run(on_parcel, {"parcel_id": 1, "weight_g": 500})
    assert (outcome.action, outcome.reason, outcome.published) == (Action.ACK, "handled", ())
    assert shipped == [(Parcel(parcel_id=1, weight_g=500), "parcel.ready")]


def test_a_model_instance_can_be_the_body() -> None:
    run(on_parcel, Parcel(parcel_id=2, weight_g=1))
    assert shipped == [(Parcel(parcel_id=2, weight_g=1), "parcel.ready")]


def test_a_payload_that_does_not_fit_is_parked_with_the_validation_error() -> None:
    outcome = run(on_parcel, {"parcel_id": 3})
    assert outcome.action is Action.PARK
    assert outcome.next_queue == "shipping.parcels.parking"
    assert outcome.error is not None
    assert outcome.error.type == "outbox_relay.consumer.errors.InvalidPayloadError"
    assert "weight_g" in outcome.reason
    assert shipped == []


def test_reject_parks_at_once_with_the_reason() -> None:
    outcome = run(on_parcel, {"parcel_id": 4, "weight_g": 40_000})
    assert (outcome.action, outcome.next_queue) == (Action.PARK, "shipping.parcels.parking")
    assert outcome.reason == "outbox_relay.consumer.errors.Reject: parcel 4 is over 30 kg"


def test_rate_limited_pauses_without_counting_an_attempt() -> None:
    outcome = run(on_parcel, {"parcel_id": 6, "weight_g": 429}, attempt=3)  # the last one
    assert (outcome.action, outcome.delay_s, outcome.next_queue) == (Action.PAUSE, 30.0, None)
    assert "no attempt counted" in outcome.reason
    assert shipped == []


def test_a_rate_limited_with_a_bad_retry_after_fails_like_any_error() -> None:
    app = ConsumerApp(name="bad-429")

    @app.handler(exchange="orders", queue="bad.429", retry_delays=[1])
    def never_ends(message: Message) -> None:
        raise RateLimited(retry_after=float("nan"))

    outcome = run(never_ends, {})
    assert (outcome.action, outcome.next_queue) == (Action.RETRY, "bad.429.retry.1s")
    assert "retry_after must be a finite number of seconds above 0" in outcome.reason
    assert isinstance(outcome.exception, ValueError)


def test_a_failure_is_retried_in_the_tier_of_its_attempt_then_parked() -> None:
    body = {"parcel_id": 5, "weight_g": -1}
    first = run(on_parcel, body)
    assert (first.action, first.next_queue, first.delay_s) == (
        Action.RETRY,
        "shipping.parcels.retry.1s",
        1.0,
    )
    assert isinstance(first.exception, RuntimeError)
    with pytest.raises(RuntimeError, match="negative weight"):
        first.raise_error()
    second = run(on_parcel, body, attempt=2)
    assert (second.action, second.next_queue) == (Action.RETRY, "shipping.parcels.retry.10s")
    last = run(on_parcel, body, attempt=3)
    assert last.action is Action.PARK
    assert last.reason.startswith("attempt 3 of 3 failed, none left: RuntimeError")


def test_retry_with_a_delay_picks_the_tier_that_long() -> None:
    outcome = run(on_parcel, {"parcel_id": 6, "weight_g": 0})
    assert (outcome.action, outcome.next_queue, outcome.delay_s) == (
        Action.RETRY,
        "shipping.parcels.retry.10s",
        10.0,
    )


def test_a_handler_that_takes_a_transaction_needs_a_connection_and_says_how() -> None:
    with pytest.raises(ConfigurationError, match=r"pass conn=.*run_handler fixture"):
        run(on_ledger, {})


def test_a_plain_function_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"decorate it with @app\.handler"):
        run(lambda message: None, {})  # type: ignore[arg-type]


def test_the_handler_object_is_still_the_function() -> None:
    on_parcel(Parcel(parcel_id=7, weight_g=1), make_message(routing_key="by.hand"))
    assert shipped == [(Parcel(parcel_id=7, weight_g=1), "by.hand")]


class TestMakeMessage:
    def test_a_body_travels_as_json(self) -> None:
        message = make_message({"a": [1, 2]}, routing_key="r", headers={"h": "v"}, attempt=3)
        assert (message.body, message.raw_body, message.content_type) == (
            {"a": [1, 2]},
            b'{"a": [1, 2]}',
            "application/json",
        )
        assert (message.routing_key, message.attempt, message.headers["h"]) == ("r", 3, "v")
        assert message.message_id

    def test_bytes_travel_as_they_are(self) -> None:
        message = make_message(b"\x00raw", content_type="application/octet-stream")
        assert (message.body, message.content_type) == (b"\x00raw", "application/octet-stream")

    def test_dataclasses_become_json(self) -> None:
        @dataclasses.dataclass
        class Point:
            x: int

        assert make_message(Point(x=1)).body == {"x": 1}

    def test_an_unserialisable_body_says_which_type(self) -> None:
        with pytest.raises(TypeError, match="object is not JSON serialisable"):
            make_message(object())

    def test_the_amqp_properties_are_set_as_given_and_none_otherwise(self) -> None:
        given = HANDLER_PROPERTIES
        message = make_message({}, **given)  # type: ignore[arg-type]
        assert {name: getattr(message, name) for name in given} == given
        assert [getattr(make_message({}), name) for name in given] == [None] * len(given)

    @pytest.mark.parametrize(
        ("expiration", "sent"),
        [(60, "60000"), (1.5, "1500"), (dt.timedelta(minutes=5), "300000"), ("0", "0")],
    )
    def test_an_expiration_is_taken_as_publish_takes_it(
        self, expiration: float | dt.timedelta | str, sent: str
    ) -> None:
        assert make_message({}, expiration=expiration).expiration == sent

    def test_a_priority_amqp_cannot_carry_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="priority: 256 is not from 0 to 255"):
            make_message({}, priority=256)

    def test_run_hands_the_properties_to_the_handler(self) -> None:
        rpc = ConsumerApp(name="rpc")
        replies: list[tuple[str | None, str | None]] = []

        @rpc.handler(exchange="rpc", queue="rpc.requests")
        def answer(message: Message) -> None:
            replies.append((message.reply_to, message.correlation_id))

        outcome = run(answer, {"q": 1}, reply_to="amq.gen-1", correlation_id="req-7")
        assert outcome.action is Action.ACK
        assert replies == [("amq.gen-1", "req-7")]
