"""Messages a non-pika client can send, with headers and properties at the extremes of
every AMQP field type: each one is handled or parked with its reason, the 50 good
messages beside them are all handled, and the consumer never reconnects because of one.

The frames are made by hand (tests/support/raw_amqp.py). RabbitMQ itself refuses some
encodings at publish (unknown type letters, NaN and infinite floats, truncated tables);
those are covered by the unit tests of outbox_relay.consumer.lenient_frames.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox_relay.consumer import ConsumerApp, Message, Reject
from outbox_relay.consumer.dead_letter import DeadLetterFilter
from outbox_relay.consumer.parking import ParkingLot
from tests.support import raw_amqp as amqp
from tests.support.broker import BrokerHelper
from tests.support.consumer import effects, make_effects_table, record_effect, running_consumer
from tests.support.relay import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(180)]

YEAR_9999_END = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second Python can hold
GOOD = 50
PAST_TIME_T = r"Value too large|out of range"  # OSError 75 or OverflowError on Linux
FRAME_FILLER = 125_000  # bytes of header that leave the frame (128 KiB) almost full
FRAME_FULL = 130_800  # bytes of header that leave no room for the failure's headers


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # "handled" or "parked"
    headers: bytes | None = None
    message_id: bytes | None = None
    content_type: bytes = b"application/json"
    timestamp: int | None = None
    reject: bool = False  # the handler rejects it, so its odd headers are republished
    reason: str = ""  # a pattern of the parked message's error, when pika could not decode it

    def raw(self) -> amqp.RawMessage:
        message_id = self.message_id if self.message_id is not None else self.name.encode()
        return amqp.RawMessage(
            message_id=message_id,
            content_type=self.content_type,
            headers=self.headers,
            timestamp=self.timestamp,
        )

    def body(self) -> bytes:
        return json.dumps({"case": self.name, "reject": self.reject}).encode()


def one(value: bytes) -> bytes:
    return amqp.table_body((b"h", value))


EVERY_TYPE = amqp.table_body(
    (b"bool", amqp.integer(b"t", 1)),
    (b"i8", amqp.integer(b"b", -128)),
    (b"u8", amqp.integer(b"B", 255)),
    (b"i16", amqp.integer(b"s", -32768)),
    (b"u16", amqp.integer(b"u", 65535)),
    (b"i32", amqp.integer(b"I", -(2**31))),
    (b"u32", amqp.integer(b"i", 2**32 - 1)),
    (b"i64", amqp.integer(b"l", -(2**63))),
    (b"i64L", amqp.integer(b"L", 2**63 - 1)),
    (b"f32", amqp.single(3.4e38)),
    (b"f64", amqp.double(1e308)),
    (b"dec", amqp.decimal(255, 2**31 - 1)),
    (b"dec0", amqp.decimal(0, -(2**31))),
    (b"ts0", amqp.timestamp(0)),
    (b"ts9999", amqp.timestamp(YEAR_9999_END)),
    (b"str", amqp.long_string("ünïcode".encode())),
    (b"bad-utf8", amqp.long_string(b"\xff\xfe\xc3")),
    (b"\xff\xfekey", amqp.long_string(b"a key that is not UTF-8")),
    (b"bytes", amqp.byte_array(bytes(range(256)))),
    (b"void", amqp.void()),
    (b"table", amqp.table((b"a", amqp.array(amqp.void(), amqp.timestamp(1))))),
    (b"arrays", amqp.nested_arrays(50)),
    (b"tables", amqp.nested_tables(50)),
)

CASES = [
    # Decodable, however odd: the handler gets them.
    Case("every-type", "handled", headers=EVERY_TYPE),
    Case("big-bytes", "handled", headers=one(amqp.byte_array(b"\x00" * 60_000))),
    Case("empty-table", "handled", headers=amqp.table_body()),
    # Decodable, but the handler rejects them: the odd values go back out in the headers.
    Case("every-type-rejected", "parked", headers=EVERY_TYPE, reject=True),
    Case(
        "attempt-at-max",
        "parked",
        headers=amqp.table_body((b"outbox-attempt", amqp.integer(b"l", 2**63 - 1))),
        reject=True,
    ),
    Case(
        "frame-full-rejected",
        "parked",
        headers=one(amqp.byte_array(b"\x01" * FRAME_FULL)),
        reject=True,
    ),
    # What pika cannot decode: parked with the reason and the raw properties.
    Case("year-10000", "parked", headers=one(amqp.timestamp(YEAR_9999_END + 1)), reason="year"),
    Case("ts-2^40", "parked", headers=one(amqp.timestamp(2**40)), reason="year"),
    Case("ts-2^62", "parked", headers=one(amqp.timestamp(2**62)), reason=PAST_TIME_T),
    Case("ts-max", "parked", headers=one(amqp.timestamp(2**64 - 1)), reason=PAST_TIME_T),
    Case(
        "ts-in-array",
        "parked",
        headers=one(amqp.array(amqp.void(), amqp.timestamp(2**62))),
        reason=PAST_TIME_T,
    ),
    Case(
        "ts-in-table",
        "parked",
        headers=one(amqp.table((b"t", amqp.timestamp(2**62)))),
        reason=PAST_TIME_T,
    ),
    Case("arrays-20000-deep", "parked", headers=one(amqp.nested_arrays(20_000)), reason="recurs"),
    Case("tables-15000-deep", "parked", headers=one(amqp.nested_tables(15_000)), reason="recurs"),
    Case(
        "undecodable-frame-full",
        "parked",
        headers=amqp.table_body(
            (b"filler", amqp.byte_array(b"\x02" * FRAME_FILLER)),
            (b"h", amqp.timestamp(2**62)),
        ),
        reason=PAST_TIME_T,
    ),
    # Properties a handler cannot be given as they are.
    Case("message-id-not-utf8", "parked", message_id=b"\xffid", reason="message_id"),
    Case("content-type-not-utf8", "parked", content_type=b"\xff/json", reason="content_type"),
    Case("timestamp-property-max", "parked", timestamp=2**64 - 1, reason="timestamp"),
]


def test_no_header_or_property_stalls_the_consumer_or_takes_its_connection_down(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> None:
    make_effects_table(database_url, schema)
    exchange = broker.exchange()
    queue = broker.name("decode")
    app = ConsumerApp(
        name=f"decode-{uuid.uuid4().hex[:6]}",
        schema=schema,
        database_url=database_url,
        amqp_url=amqp_url,
    )

    @app.handler(exchange=exchange, queue=queue, retry_delays=[0.2])
    def on_message(message: Message, tx: psycopg.Connection[Any]) -> None:
        record_effect(tx, schema, message.message_id, message.attempt, message.body["case"])
        if message.body["reject"]:
            raise Reject("rejected by the test's handler")

    good = [
        Case(f"good-{n}", "handled", headers=amqp.table_body((b"n", amqp.integer(b"I", n))))
        for n in range(GOOD)
    ]
    mixed = list(good)
    for n, case in enumerate(CASES):  # interleaved: good, bad, good, bad...
        mixed.insert(2 * n + 1, case)
    parked_names = {case.name for case in CASES if case.outcome == "parked"}

    with capture_logs() as logs, running_consumer(app, broker) as runner:
        for case in mixed:
            amqp.publish_raw(broker.channel, exchange, "k", case.body(), case.raw())
        parked = broker.drain(f"{queue}.parking", expect=len(parked_names), timeout_s=60)
        assert wait_for(
            lambda: len(effects(database_url, schema)) >= len(mixed) - len(parked_names),
            timeout_s=30,
        )
        opened = runner.connections_opened

    handled = sorted(note for _, _, note in effects(database_url, schema))
    assert handled == sorted(c.name for c in mixed if c.outcome == "handled")
    by_case = {json.loads(p.body)["case"]: p for p in parked}
    assert sorted(by_case) == sorted(parked_names)
    for case in CASES:
        if case.outcome != "parked":
            continue
        headers = by_case[case.name].properties.headers
        assert headers["outbox-failed-queue"] == queue, case.name
        if case.reject:
            assert headers["outbox-error-message"] == "rejected by the test's handler"
            continue
        assert headers["outbox-attempt"] == 1
        assert headers["outbox-error-type"].endswith("UndecodableMessageError"), case.name
        assert re.search(case.reason, headers["outbox-error-message"]), (case.name, headers)
        if case.headers is not None:  # the raw properties are kept, whole or cut
            raw = base64.b64decode(headers["outbox-raw-properties"])
            whole = case.raw().properties_payload()
            assert whole.startswith(raw), case.name
            assert headers["outbox-raw-properties-size"] == len(whole), case.name

    # Odd values went back out as AMQP can carry them; what did not fit was named.
    odd = by_case["every-type-rejected"].properties.headers
    # Floats and doubles are read as floats and go back out as doubles, value for value.
    assert odd["f64"] == 1e308
    assert odd["f32"] == struct.unpack(">f", struct.pack(">f", 3.4e38))[0]
    assert odd["i64L"] == 2**63 - 1
    assert odd["bad-utf8"] == b"\xff\xfe\xc3"
    assert odd["ts9999"].year == 9999
    assert by_case["attempt-at-max"].properties.headers["outbox-attempt"] == 2**31 - 1
    full = by_case["frame-full-rejected"].properties.headers
    assert full["outbox-dropped-headers"] == ["h"]
    assert "h" not in full
    cut = by_case["undecodable-frame-full"].properties.headers
    assert len(base64.b64decode(cut["outbox-raw-properties"])) < cut["outbox-raw-properties-size"]

    assert opened == 1
    events = [entry["event"] for entry in logs]
    assert "consumer.broker_unavailable" not in events
    parked_logged = [e for e in logs if e.get("outcome") == "parked"]
    assert len(parked_logged) == len(parked_names)


def test_the_parking_lot_lists_and_replays_a_message_whose_headers_pika_cannot_decode(
    amqp_url: str, broker: BrokerHelper
) -> None:
    """The broker dead-letters a message by itself (e.g. a quorum queue's delivery limit),
    undecodable headers and all: reading the lot must not drop the connection."""
    queue = broker.queue("orders")
    lot = broker.queue("orders.parking")
    bad = amqp.RawMessage(message_id=b"bad-1", headers=one(amqp.timestamp(2**62)))
    amqp.publish_raw(broker.channel, "", lot, b'{"n": 1}', bad)
    good = amqp.RawMessage(message_id=b"good-1", headers=one(amqp.long_string(b"fine")))
    amqp.publish_raw(broker.channel, "", lot, b'{"n": 2}', good)

    with ParkingLot(amqp_url, lot) as parking:
        letters = parking.browse(DeadLetterFilter(), limit=10)
    assert wait_for(lambda: broker.depth(lot) == 2)  # browsing gave both back
    with ParkingLot(amqp_url, lot) as parking:
        moved = parking.replay(DeadLetterFilter(message_ids=frozenset({"bad-1"})))

    assert [letter.message_id for letter in letters] == ["bad-1", "good-1"]
    first = letters[0]
    assert first.error_type == "UndecodableMessageError"
    assert re.search(PAST_TIME_T, first.error_message)
    assert first.raw_properties is not None
    assert base64.b64decode(first.raw_properties) == bad.properties_payload()
    assert letters[1].other_headers == {"h": "fine"}
    assert moved == 1
    replayed = broker.drain(queue, expect=1, timeout_s=10)
    assert [r.properties.message_id for r in replayed] == ["bad-1"]
    assert not replayed[0].properties.headers  # the headers that could not be read are gone
    assert wait_for(lambda: broker.depth(lot) == 1)  # the good one, requeued
