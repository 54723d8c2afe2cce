"""The consumer API imports without pika (pika loads only when the consumer runs), and its
testing helper without pytest (only its fixtures need it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def assert_runs(code: str) -> None:
    """``code`` runs to its end in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


def test_importing_the_consumer_api_imports_no_pika() -> None:
    code = (
        "import sys, outbox_relay.consumer, outbox_relay.consumer.testing; "
        "assert 'pika' not in sys.modules, sorted(m for m in sys.modules if 'pika' in m)"
    )
    assert_runs(code)


def test_running_loads_pika_so_the_check_above_can_fail() -> None:
    code = "import sys, outbox_relay.consumer.runner; assert 'pika' in sys.modules"
    assert_runs(code)


WITHOUT_PYTEST = """
import sys
sys.modules["pytest"] = None  # as if pytest were not installed: importing it fails
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.testing import Action, run
app = ConsumerApp(name="t")
@app.handler(exchange="x", queue="q")
def handle(message: Message) -> None:
    pass
assert run(handle, {"n": 1}).action is Action.ACK
import outbox_relay.consumer.testing as testing
assert not hasattr(testing, "run_handler")  # only the fixtures need pytest
"""


def test_the_testing_helper_works_without_pytest_installed() -> None:
    assert_runs(WITHOUT_PYTEST)
