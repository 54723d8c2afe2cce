"""Which failures retry and which park at once: retry_on, park_on and their precedence."""

from __future__ import annotations

from typing import Any

import pytest

from outbox_relay.consumer import ConsumerApp, InvalidPayloadError, Reject, Retry
from outbox_relay.consumer.errors import UndecodableMessageError
from outbox_relay.consumer.policy import ErrorPolicy, Verdict, exception_classes
from outbox_relay.errors import ConfigurationError

RETRY, PARK = Verdict.RETRY, Verdict.PARK


class PaymentDeclinedError(ValueError):
    pass


@pytest.mark.parametrize(
    ("policy", "exc", "verdict"),
    [
        # No lists: everything retries except what parks by its own meaning.
        (ErrorPolicy(), ValueError("x"), RETRY),
        (ErrorPolicy(), Retry("later"), RETRY),
        (ErrorPolicy(), Reject("never"), PARK),
        (ErrorPolicy(), InvalidPayloadError("bad body"), PARK),
        (ErrorPolicy(), UndecodableMessageError("no id"), PARK),
        # park_on: those park at once, the rest retry.
        (ErrorPolicy(park_on=(ValueError,)), PaymentDeclinedError("no"), PARK),
        (ErrorPolicy(park_on=(ValueError,)), TimeoutError("slow"), RETRY),
        # retry_on: only those retry, any other exception parks at once.
        (ErrorPolicy(retry_on=(TimeoutError, ConnectionError)), TimeoutError(), RETRY),
        (ErrorPolicy(retry_on=(OSError,)), ConnectionResetError(), RETRY),
        (ErrorPolicy(retry_on=(TimeoutError,)), KeyError("k"), PARK),
        # park_on is read before retry_on: a permanent subclass inside a family that retries.
        (ErrorPolicy(retry_on=(OSError,), park_on=(FileNotFoundError,)), FileNotFoundError(), PARK),
        (ErrorPolicy(retry_on=(OSError,), park_on=(FileNotFoundError,)), OSError(), RETRY),
        # Retry, Reject and a payload that does not fit keep their meaning whatever the lists.
        (ErrorPolicy(retry_on=(TimeoutError,)), Retry("asked"), RETRY),
        (ErrorPolicy(park_on=(Exception,)), Retry("asked"), RETRY),
        (ErrorPolicy(retry_on=(Exception,)), Reject("never"), PARK),
        (ErrorPolicy(retry_on=(Exception,)), InvalidPayloadError("bad"), PARK),
    ],
)
def test_the_verdict_follows_the_documented_precedence(
    policy: ErrorPolicy, exc: Exception, verdict: Verdict
) -> None:
    assert policy.verdict(exc) is verdict
    # A reason is given exactly when the policy itself parks the message.
    parked_by_lists = verdict is PARK and not isinstance(exc, Reject | UndecodableMessageError)
    assert (policy.reason(exc) is not None) is parked_by_lists


def test_the_reason_names_the_list_that_parked() -> None:
    policy = ErrorPolicy(retry_on=(TimeoutError,), park_on=(PaymentDeclinedError,))
    assert "park_on" in str(policy.reason(PaymentDeclinedError()))
    assert "not in the handler's retry_on" in str(policy.reason(KeyError()))
    assert policy.reason(TimeoutError()) is None


def test_one_class_or_several_are_accepted() -> None:
    assert exception_classes(None, option="retry_on") is None
    assert exception_classes(TimeoutError, option="retry_on") == (TimeoutError,)
    assert exception_classes([TimeoutError, KeyError], option="park_on") == (TimeoutError, KeyError)


def register(**kw: Any) -> None:
    app = ConsumerApp(name="app")
    app.handler(exchange="orders", queue="q", name="on_order", **kw)(lambda message: None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retry_on": ValueError("x")}, r"retry_on: .* is not an exception class"),
        ({"park_on": [TimeoutError, "KeyError"]}, r"park_on: 'KeyError' is not an exception"),
        ({"park_on": [BaseException]}, r"park_on: .* is not an exception class"),
        ({"retry_on": Retry}, r"retry_on: Retry keeps its own meaning.*leave it out"),
        ({"park_on": (Reject,)}, r"park_on: Reject keeps its own meaning"),
        ({"park_on": (InvalidPayloadError,)}, r"park_on: InvalidPayloadError keeps"),
        ({"retry_on": ()}, r"retry_on: give at least one.*use max_attempts=1"),
        ({"park_on": []}, r"park_on: give at least one exception class, or leave park_on out"),
        ({"concurrency": 0}, r"concurrency must be a whole number, at least 1 \(got 0\)"),
        ({"concurrency": -3}, r"concurrency must .* \(got -3\).*leave it out"),
        ({"concurrency": 2.5}, r"concurrency must be a whole number"),
        ({"concurrency": True}, r"concurrency must be a whole number"),
    ],
)
def test_bad_flow_settings_are_refused_at_registration_with_the_handler_and_the_fix(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"handler on_order \(queue 'q'\): " + match):
        register(**kwargs)


def test_a_handler_keeps_its_concurrency_and_policy() -> None:
    app = ConsumerApp(name="app")

    @app.handler(
        exchange="orders", queue="q", concurrency=2, retry_on=TimeoutError, park_on=[KeyError]
    )
    def on_order(message: Any) -> None: ...

    assert on_order.concurrency == 2
    assert on_order.policy == ErrorPolicy(retry_on=(TimeoutError,), park_on=(KeyError,))
    assert app.handlers[0].concurrency == 2
