"""Registering handlers and building settings: mistakes are refused before connecting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from outbox_relay.consumer import ConsumerApp, ConsumerSettings, Message
from outbox_relay.consumer.declare import topology_for
from outbox_relay.consumer.testing import make_message
from outbox_relay.errors import ConfigurationError


def on_message(message: Message, tx: Any) -> None:
    pass


def test_a_handler_is_still_its_function_and_knows_its_queues() -> None:
    app = ConsumerApp(name="billing")
    calls: list[tuple[object, object]] = []

    def on_message(message: Message, tx: Any) -> None:
        """Bill the order."""
        calls.append((message, tx))

    decorated = app.handler(
        exchange="orders",
        queue="billing.orders",
        bindings=["order.created", "order.paid"],
        retry_delays=[1, 10, 60],
    )(on_message)
    decorated("a message", tx="a tx")
    assert calls == [("a message", "a tx")]
    assert (decorated.__name__, decorated.__doc__) == ("on_message", "Bill the order.")
    handler = app.handlers[0]
    assert handler is decorated
    assert (handler.queue, handler.bindings, handler.max_attempts) == (
        "billing.orders",
        ("order.created", "order.paid"),
        5,
    )
    assert handler.inbox_key == "billing:billing.orders"
    assert handler.uses_db
    route = handler.route
    assert [name for name, _ in route.tiers] == [
        "billing.orders.retry.1s",
        "billing.orders.retry.10s",
        "billing.orders.retry.1m",
    ]
    assert route.parking == "billing.orders.parking"
    topology = topology_for(app.handlers)
    assert [e.name for e in topology.exchanges] == ["orders"]
    assert [b.routing_key for b in topology.queues[0].bindings] == ["order.created", "order.paid"]


def test_a_handler_can_declare_a_priority_queue() -> None:
    app = ConsumerApp(name="mailer")
    app.handler(exchange="e", queue="emails", max_priority=10)(on_message)
    (spec,) = topology_for(app.handlers).queues
    assert spec.main_arguments()["x-max-priority"] == 10


def test_a_handler_without_tx_needs_no_database() -> None:
    app = ConsumerApp(name="n", amqp_url="amqp://localhost")
    app.handler(exchange="e", queue="q")(lambda message: None)
    assert not app.handlers[0].uses_db
    assert app.settings().database_url is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"retry_delays": []}, "retry delays are empty|retry_delays"),
        ({"retry_delays": [1, 1]}, "repeat|once"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 3600}, "consumer_timeout"),
        ({"queue_type": "stream"}, "queue"),
        ({"bindings": []}, "bindings"),
        ({"max_priority": 0}, "max_priority is 0, it must be 1 to 255"),
        ({"max_priority": 5, "queue_type": "quorum"}, "max_priority needs type = 'classic'"),
    ],
)
def test_bad_handler_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    app = ConsumerApp(name="x")
    with pytest.raises(ConfigurationError, match=match):
        app.handler(exchange="e", queue="q", **kwargs)(on_message)


def test_two_handlers_cannot_share_a_queue() -> None:
    app = ConsumerApp(name="x")
    app.handler(exchange="e", queue="q")(on_message)
    with pytest.raises(ConfigurationError, match="another handler"):
        app.handler(exchange="e", queue="q")(on_message)


@pytest.mark.parametrize(
    ("func", "match"),
    [
        (lambda m: None, r"parameter 'm' is unknown; name it `message`"),
        (lambda message, tx, extra: None, r"parameter 'extra' is unknown"),
        (lambda *args: None, r"parameter \*args takes any arguments"),
        (lambda message, **kw: None, r"parameter \*\*kw takes any arguments"),
    ],
)
def test_parameters_the_sdk_cannot_fill_are_refused_with_the_fix(func: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=r"handler .*<lambda>: " + match):
        ConsumerApp(name="x").handler(exchange="e", queue="q")(func)


def test_an_async_handler_is_registered_and_still_its_coroutine_function() -> None:
    app = ConsumerApp(name="x")
    seen: list[object] = []

    @app.handler(exchange="e", queue="q")
    async def on_message(message: Message) -> None:
        seen.append(message)

    assert on_message.is_async
    assert not on_message.uses_db
    coroutine = on_message("a message")  # calling it is calling the function
    assert asyncio.iscoroutine(coroutine)
    asyncio.run(coroutine)  # type: ignore[arg-type]
    assert seen == ["a message"]


def test_an_object_whose_call_is_async_is_an_async_handler() -> None:
    seen: list[object] = []

    class OnMessage:
        async def __call__(self, message: Message) -> None:
            await asyncio.sleep(0)
            seen.append(message.body)

    handler = ConsumerApp(name="x").handler(exchange="e", queue="q")(OnMessage())
    assert handler.is_async
    handler.invoke(make_message({"n": 1}))
    assert seen == [{"n": 1}]


def test_a_plain_function_returning_a_coroutine_is_refused_when_called() -> None:
    async def work() -> None: ...

    def sneaky(message: Message) -> Any:
        return work()

    handler = ConsumerApp(name="x").handler(exchange="e", queue="q")(sneaky)
    with pytest.raises(ConfigurationError, match=r"returned an awaitable.*declare the handler"):
        handler.invoke(make_message(None))


def test_settings_come_from_overrides_then_app_then_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("OUTBOX_RELAY_DATABASE_URL", "postgresql://env/db")
    monkeypatch.setenv("OUTBOX_RELAY_AMQP_URL", "amqp://env")
    app = ConsumerApp(name="x", amqp_url="amqp://app", concurrency=3)
    app.handler(exchange="e", queue="q")(on_message)
    settings = app.settings(concurrency=None, schema="s")
    assert settings.database_url == "postgresql://env/db"
    assert settings.amqp_url == "amqp://app"
    assert (settings.concurrency, settings.prefetch, settings.schema) == (3, 6, "s")


def test_run_takes_durations_by_the_apps_argument_names_too() -> None:
    app = ConsumerApp(name="x", database_url="postgresql://h/d")
    app.handler(exchange="e", queue="q")(on_message)
    settings = app.settings(shutdown_grace=5, inbox_retention_s=60)
    assert (settings.shutdown_grace_s, settings.inbox_retention_s) == (5, 60)


def test_an_unknown_setting_is_refused_by_name_with_the_settings_there_are() -> None:
    app = ConsumerApp(name="x", database_url="postgresql://h/d")
    app.handler(exchange="e", queue="q")(on_message)
    with pytest.raises(ConfigurationError, match=r"'http_prot'.*http_port"):
        app.settings(http_prot=9102)


def test_a_transactional_handler_without_a_database_url_is_refused(monkeypatch: Any) -> None:
    monkeypatch.delenv("OUTBOX_RELAY_DATABASE_URL", raising=False)
    app = ConsumerApp(name="x")
    app.handler(exchange="e", queue="q")(on_message)
    with pytest.raises(ConfigurationError, match="OUTBOX_RELAY_DATABASE_URL"):
        app.settings()


def test_an_app_without_handlers_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no handlers"):
        ConsumerApp(name="x", database_url="postgresql://h/d").settings()


def test_the_http_port_is_checked_with_the_other_settings() -> None:
    with pytest.raises(ConfigurationError, match="http_port"):
        ConsumerSettings(name="x", http_port=70000)


@pytest.mark.parametrize("name", ["billing:eu", "bill\x00ing"])
def test_a_name_that_could_reach_another_apps_inbox_rows_is_refused(name: str) -> None:
    app = ConsumerApp(name=name, amqp_url="amqp://localhost")
    app.handler(exchange="e", queue="q")(lambda message: None)
    with pytest.raises(ConfigurationError, match="contains ':' or NUL"):
        app.settings()
