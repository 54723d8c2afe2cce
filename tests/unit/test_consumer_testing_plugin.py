"""The testing helper as users enable it: a pytest plugin named in their root conftest."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = 'pytest_plugins = ["outbox_relay.consumer.testing"]\n'
TESTS = """
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.testing import Action

app = ConsumerApp(name="plugin")
seen = []


@app.handler(exchange="e", queue="q")
def on_message(message: Message) -> None:
    seen.append(message.body)


@app.handler(exchange="e", queue="q2")
def on_tx(message: Message, tx) -> None:
    pass


def test_a_handler_without_a_database(run_handler):
    assert run_handler(on_message, {"n": 1}).action is Action.ACK
    assert seen == [{"n": 1}]


def test_a_handler_with_a_transaction_needs_the_database(run_handler):
    run_handler(on_tx, {})
"""


def test_the_plugin_runs_handlers_and_says_how_to_give_it_a_database(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTBOX_RELAY_TEST_DATABASE_URL", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_handlers=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*set OUTBOX_RELAY_TEST_DATABASE_URL to a PostgreSQL database*"])
