"""A blocking pika helper for tests: declare, consume and clean up uniquely named objects."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions


@dataclass
class Received:
    body: bytes
    routing_key: str
    exchange: str
    properties: pika.BasicProperties
    redelivered: bool


class BrokerHelper:
    def __init__(self, url: str, *, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._conn = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self._conn.channel()
        self.exchanges: list[str] = []
        self.queues: list[str] = []

    def reconnect(self) -> None:
        """A fresh connection, after a test closed or restarted the broker under this one."""
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._conn.close()
        self._conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self._conn.channel()

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    def exchange(self, suffix: str = "ex", *, kind: str = "topic", **arguments: Any) -> str:
        name = self.name(suffix)
        self.channel.exchange_declare(name, kind, durable=True, arguments=arguments or None)
        self.exchanges.append(name)
        return name

    def queue(
        self, suffix: str = "q", *, bind: tuple[str, str] | None = None, **arguments: Any
    ) -> str:
        name = self.name(suffix)
        self.channel.queue_declare(name, durable=True, arguments=arguments or None)
        self.queues.append(name)
        if bind is not None:
            self.channel.queue_bind(name, bind[0], routing_key=bind[1])
        return name

    def track_queue(self, name: str) -> None:
        self.queues.append(name)

    def track_exchange(self, name: str) -> None:
        self.exchanges.append(name)

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def drain(self, queue: str, *, expect: int, timeout_s: float = 20.0) -> list[Received]:
        """Get messages until ``expect`` arrived or the timeout; acks each one."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expect and time.monotonic() < deadline:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                self._conn.process_data_events(time_limit=0.02)
                continue
            got.append(
                Received(body, method.routing_key, method.exchange, props, method.redelivered)
            )
        return got

    def drain_all(self, queue: str, *, quiet_s: float = 0.5) -> list[Received]:
        """Everything in the queue until it stays empty for ``quiet_s``."""
        got: list[Received] = []
        quiet_until = time.monotonic() + quiet_s
        while time.monotonic() < quiet_until:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                self._conn.process_data_events(time_limit=0.02)
                continue
            got.append(
                Received(body, method.routing_key, method.exchange, props, method.redelivered)
            )
            quiet_until = time.monotonic() + quiet_s
        return got

    def collect(self, queue: str, *, quiet_s: float = 1.0) -> list[Received]:
        """Consume (fast, with prefetch) until the queue stays quiet for ``quiet_s``."""
        got: list[Received] = []
        self.channel.basic_qos(prefetch_count=1000)
        for method, props, body in self.channel.consume(queue, inactivity_timeout=quiet_s):
            if method is None:
                break
            got.append(
                Received(body, method.routing_key, method.exchange, props, method.redelivered)
            )
            self.channel.basic_ack(method.delivery_tag)
        self.channel.cancel()
        return got

    def cleanup(self) -> None:
        try:
            if not self.channel.is_open:
                self.channel = self._conn.channel()
            for queue in self.queues:
                self.channel.queue_delete(queue)
            for exchange in self.exchanges:
                self.channel.exchange_delete(exchange)
            self._conn.close()
        except pika.exceptions.AMQPError:
            # A fresh connection for a test that broke this one (e.g. closed connections).
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = conn.channel()
            for queue in self.queues:
                channel.queue_delete(queue)
            for exchange in self.exchanges:
                channel.exchange_delete(exchange)
            conn.close()
