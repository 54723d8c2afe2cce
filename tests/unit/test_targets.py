"""Connection adapters: frameworks are recognised without being imported."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
import outbox_relay
try:
    outbox_relay.publish(object(), exchange="o", routing_key="r", payload={})
except outbox_relay.InvalidMessageError as exc:
    print(exc)
print(sorted({m.partition(".")[0] for m in sys.modules} & {"django", "sqlalchemy", "sqlmodel"}))
"""


def test_publish_imports_no_framework_to_recognise_one() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out[0].startswith("conn: object is not supported; pass a psycopg 3 Connection")
    assert out[1] == "[]"
