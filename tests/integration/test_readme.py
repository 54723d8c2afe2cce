"""The README's "Add it to your app", run as written: its shell commands and its Python,
with only the example hosts, credentials and ports swapped for the test's services. A
private database and a private vhost hold the README's literal names (`public`, `orders`,
`billing.orders`), so nothing else in the suite can meet them."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest

from tests.support.http import free_port
from tests.support.relay import wait_for
from tests.support.schemas import private_database
from tests.support.services import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The README's example services, as a reader would replace them.
EXAMPLE_DATABASE = re.compile(r"postgresql://\w+@db/app")
EXAMPLE_BROKER = re.compile(r"amqp://\w+:pw@mq:5672/%2F")
EXAMPLE_PORT = re.compile(r"--http-port \d+")
TOPOLOGY = """\
[[exchanges]]
name = "orders"
type = "topic"
"""


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    return text[start : text.index("\n## ", start + 1)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def commands(block: str) -> list[str]:
    """The shell lines of a block, continuations joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@contextlib.contextmanager
def private_vhost(amqp_url: str) -> Iterator[str]:
    """``amqp_url`` on a vhost of its own, deleted afterwards (with all it holds), made
    with the local node's rabbitmqctl."""
    if urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        unavailable("a private vhost needs the broker's own rabbitmqctl: run on its host")
    name = f"t_readme_{uuid.uuid4().hex[:8]}"
    user = urlsplit(amqp_url).username or "guest"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", name, user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        parts = urlsplit(amqp_url)
        yield parts._replace(path="/" + quote(name, safe="")).geturl()
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=True, capture_output=True)


def localised(command: str, *, database_url: str, amqp_url: str) -> str:
    command = EXAMPLE_DATABASE.sub(lambda _: shlex.quote(database_url), command)
    command = EXAMPLE_BROKER.sub(lambda _: shlex.quote(amqp_url), command)
    return EXAMPLE_PORT.sub(lambda _: f"--http-port {free_port()}", command)


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    return output


@pytest.mark.timeout(180)
def test_the_four_steps_work_as_written(database_url: str, amqp_url: str, tmp_path: Path) -> None:
    text = section(README.read_text(encoding="utf-8"), "Add it to your app")
    shells = [commands(block) for block in blocks(text, "sh")]
    install, schema_steps, relay_steps, consume_steps = shells
    assert install == ["pip install outbox-relay"]  # done: the suite runs on the package
    producer, handlers = blocks(text, "python")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(tmp_path)

    with private_database(database_url) as db, private_vhost(amqp_url) as mq:
        local = {"database_url": db, "amqp_url": mq}
        # A command without its URLs (the topology's) reads them from the environment, as
        # a reader's deployment sets them: never the machine's default vhost.
        env["OUTBOX_RELAY_AMQP_URL"], env["OUTBOX_RELAY_DATABASE_URL"] = mq, db
        # 1. The schema.
        for command in schema_steps:
            finished(shell(localised(command, **local), tmp_path, env))
        assert "CREATE TABLE" in (tmp_path / "outbox.sql").read_text(encoding="utf-8")
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id uuid PRIMARY KEY, total numeric)")
            conn.execute("CREATE TABLE invoices (order_id text PRIMARY KEY)")

        # 4, its declarations first: the exchange must exist when the relay publishes.
        (tmp_path / "topology.toml").write_text(TOPOLOGY, encoding="utf-8")
        apply_topology, consume = consume_steps
        finished(shell(localised(apply_topology, **local), tmp_path, env))
        (tmp_path / "billing").mkdir()
        (tmp_path / "billing" / "__init__.py").write_text("", encoding="utf-8")
        (tmp_path / "billing" / "handlers.py").write_text(handlers, encoding="utf-8")

        # 2. Publish in the order's transaction (the README's code, committed on exit).
        order_id = uuid.uuid4()
        exec(  # noqa: S102 - the README's own code, run as a reader runs it
            compile(producer, "README.md", "exec"),
            {"DSN": db, "order_id": order_id, "total": 42},
        )

        # 3 and 4: the relay and the consumer, as the README starts them.
        (relay_command,) = relay_steps
        relay = shell(localised(relay_command, **local), tmp_path, env)
        consumer = shell(localised(consume, **local), tmp_path, env)
        try:
            with psycopg.connect(db, autocommit=True) as conn:

                def invoiced() -> list[tuple[str]]:
                    return conn.execute("SELECT order_id FROM invoices").fetchall()

                assert wait_for(lambda: invoiced() != [], timeout_s=60), "no invoice"
                assert invoiced() == [(str(order_id),)]
                assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        finally:
            for process in (consumer, relay):
                process.terminate()
        for process in (consumer, relay):
            output = finished(process)
            assert "Traceback" not in output, output
