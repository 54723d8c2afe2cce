"""The consumer API imports without pika: pika loads only when the consumer runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_consumer_api_imports_no_pika() -> None:
    code = (
        "import sys, outbox_relay.consumer, outbox_relay.consumer.testing; "
        "assert 'pika' not in sys.modules, sorted(m for m in sys.modules if 'pika' in m)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


def test_running_loads_pika_so_the_check_above_can_fail() -> None:
    code = "import sys, outbox_relay.consumer.runner; assert 'pika' in sys.modules"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
