"""Async handlers on their worker's event loop: run to completion, cancelled at their
timeout from another thread, and invoked like plain handlers."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
import time

import pytest

from outbox_relay.consumer import ConsumerApp, InvalidPayloadError, Message
from outbox_relay.consumer.aio import HandlerLoop
from outbox_relay.consumer.errors import HandlerCancelledError, HandlerTimeoutError
from outbox_relay.consumer.testing import make_message

REQUEST = contextvars.ContextVar("REQUEST", default="none")


@dataclasses.dataclass
class Order:
    order_id: int


class TestHandlerLoop:
    def test_runs_coroutines_on_one_loop_created_on_first_use(self) -> None:
        runner = HandlerLoop()

        async def which_loop() -> object:
            await asyncio.sleep(0)
            return asyncio.get_running_loop()

        try:
            first = runner.run(which_loop(), name="h")
            assert runner.run(which_loop(), name="h") is first
        finally:
            runner.close()
        assert first.is_closed()  # type: ignore[attr-defined]

    def test_the_task_sees_the_callers_context(self) -> None:
        runner = HandlerLoop()

        async def read() -> str:
            return REQUEST.get()

        token = REQUEST.set("trace-1")
        try:
            assert runner.run(read(), name="h") == "trace-1"
        finally:
            REQUEST.reset(token)
            runner.close()

    def test_an_interrupt_from_another_thread_cancels_the_task_at_its_await(self) -> None:
        runner = HandlerLoop()
        cleaned_up = threading.Event()

        async def stuck() -> None:
            try:
                await asyncio.sleep(30)
            finally:
                cleaned_up.set()

        timer = threading.Timer(0.2, runner.interrupt)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(HandlerTimeoutError, match="handler h was cancelled at its timeout"):
                runner.run(stuck(), name="h")
        finally:
            timer.join()
            runner.close()
        assert time.monotonic() - started < 5
        assert cleaned_up.is_set()

    def test_after_an_interrupt_no_coroutine_starts(self) -> None:
        runner = HandlerLoop()
        runner.interrupt()
        ran: list[bool] = []

        async def work() -> None:
            ran.append(True)

        with pytest.raises(HandlerTimeoutError, match="interrupted before it started"):
            runner.run(work(), name="h")  # closed, never awaited: no warning either
        runner.close()
        assert ran == []

    def test_a_handler_cancelling_itself_is_a_failure_not_a_timeout(self) -> None:
        runner = HandlerLoop()

        async def cancels_itself() -> None:
            raise asyncio.CancelledError

        try:
            with pytest.raises(HandlerCancelledError, match="cancelled by its own code"):
                runner.run(cancels_itself(), name="h")
        finally:
            runner.close()

    def test_errors_pass_through_as_raised(self) -> None:
        runner = HandlerLoop()

        async def fails() -> None:
            raise KeyError("no such order")

        try:
            with pytest.raises(KeyError, match="no such order"):
                runner.run(fails(), name="h")
        finally:
            runner.close()


class TestInvoke:
    def test_an_async_handler_gets_its_parameters_and_runs_on_the_loop_given(self) -> None:
        app = ConsumerApp(name="x")
        seen: list[tuple[Order, str, object]] = []

        @app.handler(exchange="e", queue="q")
        async def on_order(order: Order, message: Message, tx: object) -> None:
            await asyncio.sleep(0)
            seen.append((order, message.routing_key, tx))

        runner = HandlerLoop()
        try:
            on_order.invoke(make_message({"order_id": 7}, routing_key="o.c"), "tx", loop=runner)
        finally:
            runner.close()
        assert seen == [(Order(order_id=7), "o.c", "tx")]

    def test_without_a_loop_it_runs_on_one_of_its_own(self) -> None:
        app = ConsumerApp(name="x")
        loops: list[asyncio.AbstractEventLoop] = []

        @app.handler(exchange="e", queue="q")
        async def on_message(message: Message) -> None:
            loops.append(asyncio.get_running_loop())

        on_message.invoke(make_message(None))
        assert loops[0].is_closed()

    def test_a_payload_that_does_not_fit_fails_before_the_coroutine_exists(self) -> None:
        app = ConsumerApp(name="x")

        @app.handler(exchange="e", queue="q")
        async def on_order(order: Order) -> None:
            raise AssertionError("never runs")

        runner = HandlerLoop()
        try:
            with pytest.raises(InvalidPayloadError, match="order_id"):
                on_order.invoke(make_message({"id": 7}), loop=runner)
        finally:
            runner.close()
