"""The optional AMQP properties: validated at publish, stored as JSON, checked at the relay."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.encoding import new_message
from outbox_relay.errors import InvalidMessageError
from outbox_relay.message import OutboxMessage, UnreadableHeaders, amqp_problem
from outbox_relay.properties import (
    MAX_EXPIRATION_MS,
    encode_properties,
    expiration_ms,
    stored_problem,
)
from tests.support.rows import sized_row


def message(**properties: Any) -> OutboxMessage:
    return OutboxMessage(exchange="orders", routing_key="k", payload={}, **properties)


class TestEncode:
    def test_none_set_stores_null(self) -> None:
        assert encode_properties(message()) is None

    def test_the_values_set_are_stored_by_their_amqp_names(self) -> None:
        stored = encode_properties(
            message(
                correlation_id="c-1",
                reply_to="amq.rabbitmq.reply-to",
                priority=7,
                expiration=dt.timedelta(minutes=1),
                type="order.created",
                app_id="shop",
                content_encoding="gzip",
            )
        )
        assert stored is not None
        assert json.loads(stored) == {
            "correlation_id": "c-1",
            "reply_to": "amq.rabbitmq.reply-to",
            "priority": 7,
            "expiration": "60000",
            "type": "order.created",
            "app_id": "shop",
            "content_encoding": "gzip",
        }
        assert stored_problem(json.loads(stored)) is None

    def test_new_message_carries_them(self) -> None:
        new = new_message(message(priority=0, correlation_id=""))
        assert json.loads(new.properties_json or "") == {"priority": 0, "correlation_id": ""}
        assert new_message(message()).properties_json is None

    @pytest.mark.parametrize(
        ("arguments", "names"),
        [
            ({"priority": 256}, ["priority", "256", "255"]),
            ({"priority": -1}, ["priority", "-1"]),
            ({"priority": True}, ["priority", "bool"]),
            ({"priority": 1.0}, ["priority", "float"]),
            ({"priority": "5"}, ["priority", "str"]),
            ({"expiration": -1}, ["expiration", "-1"]),
            ({"expiration": math.nan}, ["expiration", "nan"]),
            ({"expiration": math.inf}, ["expiration", "inf"]),
            ({"expiration": 10**400}, ["expiration", "an int of"]),
            ({"expiration": "60"}, ["expiration", "str"]),
            ({"expiration": dt.timedelta(days=50)}, ["expiration", "4294967"]),
            ({"correlation_id": 42}, ["correlation_id", "int"]),
            ({"reply_to": "x" * 256}, ["reply_to", "256", "255"]),
            ({"type": "é" * 128}, ["type", "256"]),
            ({"app_id": "a\x00"}, ["app_id", "NUL"]),
            ({"content_encoding": "\ud800"}, ["content_encoding", "surrogate"]),
        ],
    )
    def test_a_bad_value_is_refused_naming_it(
        self, arguments: dict[str, Any], names: list[str]
    ) -> None:
        with pytest.raises(InvalidMessageError) as info:
            new_message(message(**arguments))
        for name in names:
            assert name in str(info.value)


class TestExpiration:
    @pytest.mark.parametrize(
        ("given", "sent"),
        [
            (0, "0"),
            (1, "1000"),
            (0.0004, "0"),
            (0.0006, "1"),
            (1.5, "1500"),
            (dt.timedelta(hours=1), "3600000"),
            (dt.timedelta(milliseconds=250), "250"),
            (MAX_EXPIRATION_MS / 1000, str(MAX_EXPIRATION_MS)),
        ],
    )
    def test_is_sent_as_a_string_of_integer_milliseconds(self, given: object, sent: str) -> None:
        assert expiration_ms(given) == sent  # type: ignore[arg-type]

    @given(st.floats(0, MAX_EXPIRATION_MS / 1000))
    def test_every_accepted_time_to_live_is_one_the_relay_sends(self, seconds: float) -> None:
        assert stored_problem({"expiration": expiration_ms(seconds)}) is None


class TestStoredByOtherWriters:
    @pytest.mark.parametrize(
        ("stored", "names"),
        [
            ({"user_id": "bob"}, ["user_id", "correlation_id"]),
            ({"priority": 300}, ["priority", "300"]),
            ({"priority": "high"}, ["priority", "high"]),
            ({"priority": True}, ["priority"]),
            ({"priority": 2.0}, ["priority"]),
            ({"expiration": 60000}, ["expiration", "60000", "not a string"]),
            ({"expiration": "1.5"}, ["expiration", "'1.5'", "milliseconds"]),
            ({"expiration": "-1"}, ["expiration"]),
            ({"expiration": "4294967296"}, ["expiration"]),
            ({"expiration": "١٢"}, ["expiration"]),  # digits, but not ASCII ones
            ({"reply_to": "x" * 256}, ["reply_to", "256"]),
            ({"type": None}, ["type", "None"]),
            (["priority"], ["properties", "list"]),
        ],
    )
    def test_a_value_amqp_or_rabbitmq_would_refuse_fails_the_row(
        self, stored: Any, names: list[str]
    ) -> None:
        row = dataclasses.replace(sized_row(1, 10), properties=stored)
        problem = amqp_problem(row)
        assert problem is not None
        assert problem.startswith("properties")
        for name in names:
            assert name in problem

    def test_unreadable_properties_fail_the_row(self) -> None:
        row = dataclasses.replace(sized_row(1, 10), properties=UnreadableHeaders("too deep"))
        assert amqp_problem(row) == "properties: too deep"

    def test_the_properties_count_towards_the_frame(self) -> None:
        row = sized_row(1, 10)
        headers = {"h": "x" * 3700}
        every = dict.fromkeys(
            ("correlation_id", "reply_to", "type", "app_id", "content_encoding"), "x" * 255
        )
        assert amqp_problem(dataclasses.replace(row, headers=headers), frame_max=4096) is None
        problem = amqp_problem(
            dataclasses.replace(row, headers=headers, properties=every), frame_max=4096
        )
        assert problem is not None
        assert "frame_max of 4096" in problem


class TestMessageIdsByOtherWriters:
    @pytest.mark.parametrize(
        ("message_id", "problem"),
        [
            ("", "message_id: is empty"),
            ("x" * 256, "message_id is 256 bytes"),
            ("é" * 128, "message_id is 256 bytes"),
        ],
    )
    def test_an_id_amqp_cannot_carry_fails_the_row(self, message_id: str, problem: str) -> None:
        row = dataclasses.replace(sized_row(1, 10), message_id=message_id)
        assert problem in (amqp_problem(row) or "")

    @pytest.mark.parametrize("message_id", ["x", "x" * 255, "é" * 127, "order-42-created"])
    def test_any_other_text_goes_out(self, message_id: str) -> None:
        assert amqp_problem(dataclasses.replace(sized_row(1, 10), message_id=message_id)) is None
