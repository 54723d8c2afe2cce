"""What no retry fixes ends `run` and `consume` at start with one line and exit code 3;
the same refusal later in life is retried, loudly (issue 24).

PostgreSQL here trusts 127.0.0.1 (any password is accepted), so its refusals are a role
and a database that do not exist; RabbitMQ refuses a wrong password and an unknown vhost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from outbox_relay.cli import main
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.serve import instrumented_runner
from outbox_relay.observability.relay_metrics import RelayMetrics
from tests.support.broker import BrokerHelper
from tests.support.consumer import publish, subprocess_env, track
from tests.support.faults import broker_proxy, rabbitmqctl
from tests.support.relay import make_relay, outbox_rows, wait_for
from tests.support.threads import in_background

pytestmark = pytest.mark.integration

EXIT_MISCONFIGURED = 3
ROOT = Path(__file__).resolve().parents[2]
SECRET = "Pw-9f7c-not-this"  # noqa: S105 - a wrong password, to check it never shows


def with_netloc(url: str, *, user: str | None = None, password: str | None = None) -> str:
    parts = urlsplit(url)
    name = user if user is not None else parts.username or ""
    secret = password if password is not None else parts.password
    auth = f"{quote(name, safe='')}:{quote(secret, safe='')}" if secret else quote(name, safe="")
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port or ''}"))


def with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


@pytest.fixture
def rabbit_user(amqp_url: str) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of this test alone, with a password, on the URL's vhost."""
    name = f"outbox_relay_test_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    vhost = urlsplit(amqp_url).path.lstrip("/").replace("%2F", "/") or "/"
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
        yield name, password
    finally:
        rabbitmqctl("delete_user", name)


def one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    return errors[0]


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", *args])


def consume_process(
    database_url: str, amqp_url: str, schema: str, broker: BrokerHelper
) -> tuple[int, str]:
    """`outbox-relay consume` of tests/support/consumer_app.py: its exit code and stderr."""
    env, _, _ = subprocess_env(database_url, amqp_url, schema, broker)
    done = subprocess.run(
        [sys.executable, "-m", "outbox_relay", "consume", "tests.support.consumer_app:app"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr


class TestAtStart:
    @pytest.fixture
    def bad_database_urls(self, database_url: str) -> list[tuple[str, str]]:
        missing = f"no_such_{uuid.uuid4().hex[:8]}"
        return [
            (with_netloc(database_url, user=missing, password=SECRET), "role does not exist"),
            (with_path(with_netloc(database_url, password=SECRET), f"/{missing}"), "database"),
        ]

    def test_run_stops_on_a_database_that_refuses(
        self, bad_database_urls: list[tuple[str, str]], amqp_url: str, schema: str
    ) -> None:
        for url, cause in bad_database_urls:
            result = run_cli("--database-url", url, "--amqp-url", amqp_url, "--schema", schema)
            assert result.exit_code == EXIT_MISCONFIGURED, result.output
            line = one_error_line(result.output)
            assert cause in line
            assert "--database-url" in line, "names the fix"
            assert "***" in line, "names the URL, redacted"
            assert SECRET not in result.output

    def test_run_stops_on_a_schema_without_the_outbox(
        self, database_url: str, amqp_url: str
    ) -> None:
        result = run_cli(
            "--database-url", database_url, "--amqp-url", amqp_url, "--schema", "no_outbox_here"
        )
        assert result.exit_code == EXIT_MISCONFIGURED, result.output
        line = one_error_line(result.output)
        assert "outbox-relay migrate" in line
        assert urlsplit(database_url).hostname in line

    def test_run_stops_on_a_broker_that_refuses(
        self, database_url: str, amqp_url: str, schema: str, rabbit_user: tuple[str, str]
    ) -> None:
        user, _ = rabbit_user
        cases = [
            (with_netloc(amqp_url, user=user, password=SECRET), "refused the login"),
            (with_path(amqp_url, "/no_such_vhost_outbox_relay"), "vhost"),
        ]
        for url, cause in cases:
            result = run_cli("--database-url", database_url, "--amqp-url", url, "--schema", schema)
            assert result.exit_code == EXIT_MISCONFIGURED, result.output
            line = one_error_line(result.output)
            assert cause in line
            assert "--amqp-url" in line
            assert SECRET not in result.output

    def test_consume_stops_on_a_database_or_broker_that_refuses(
        self,
        database_url: str,
        amqp_url: str,
        schema: str,
        broker: BrokerHelper,
        rabbit_user: tuple[str, str],
    ) -> None:
        user, _ = rabbit_user
        cases = [
            (with_netloc(database_url, user="no_such_role_x", password=SECRET), amqp_url, "role"),
            (database_url, with_netloc(amqp_url, user=user, password=SECRET), "login"),
            (database_url, with_path(amqp_url, "/no_such_vhost_outbox_relay"), "vhost"),
        ]
        for db_url, broker_url, cause in cases:
            code, stderr = consume_process(db_url, broker_url, schema, broker)
            assert code == EXIT_MISCONFIGURED, stderr
            line = one_error_line(stderr)
            assert cause in line
            assert SECRET not in stderr

    def test_consume_stops_on_a_schema_without_the_inbox(
        self, database_url: str, amqp_url: str, broker: BrokerHelper
    ) -> None:
        code, stderr = consume_process(database_url, amqp_url, "no_inbox_here", broker)
        assert code == EXIT_MISCONFIGURED, stderr
        line = one_error_line(stderr)
        assert "outbox-relay migrate" in line
        assert "no_inbox_here.inbox" in line


def test_a_password_changed_under_a_running_relay_is_retried_loudly_then_recovers(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    rabbit_user: tuple[str, str],
) -> None:
    user, password = rabbit_user
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "#"))
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    with broker_proxy(with_netloc(amqp_url, user=user, password=password)) as (proxy, proxied):
        relay = make_relay(
            database_url,
            proxied,
            schema,
            observer=metrics,
            reconnect_max_s=0.3,
            unhealthy_after_s=1.0,
        )
        with capture_logs() as logs, in_background(relay.run, relay.stop, name="relay"):
            assert wait_for(lambda: relay.readiness()[0])
            rabbitmqctl("change_password", user, uuid.uuid4().hex)  # rotated elsewhere
            proxy.cut()  # the next connection must log in again
            assert wait_for(lambda: not relay.liveness()[0], timeout_s=20)
            reason = relay.liveness()[1]
            assert "the broker has refused" in reason
            assert "refused the login" in reason
            scraped = generate_latest(registry).decode()
            assert 'outbox_relay_dependency_up{service="broker"} 0.0' in scraped
            assert 'outbox_relay_dependency_refused{service="broker"} 1.0' in scraped
            assert relay.stopping is False, "still retrying"

            rabbitmqctl("change_password", user, password)  # put right
            assert wait_for(lambda: relay.liveness()[0] and relay.readiness()[0], timeout_s=20)
            import psycopg

            import outbox_relay

            with psycopg.connect(database_url) as conn:
                outbox_relay.publish(
                    conn, exchange=exchange, routing_key="k", payload={"n": 1}, schema=schema
                )
            assert len(broker.drain(queue, expect=1, timeout_s=10)) == 1
            assert wait_for(lambda: not outbox_rows(database_url, schema))
    refused = [e for e in logs if e["event"] == "relay.dependency_refused"]
    assert 1 <= len(refused) <= 2, "at a bounded rate, not per try"
    assert refused[0]["log_level"] == "error"
    assert password not in str(logs)
    assert [e for e in logs if e["event"] == "relay.dependency_accepted"], [
        e["event"] for e in logs
    ]
    scraped = generate_latest(registry).decode()
    assert 'outbox_relay_dependency_refused{service="broker"} 0.0' in scraped


def test_a_password_changed_under_a_running_consumer_is_retried_loudly_then_recovers(
    database_url: str,
    amqp_url: str,
    schema: str,
    broker: BrokerHelper,
    rabbit_user: tuple[str, str],
) -> None:
    user, password = rabbit_user
    exchange = broker.exchange()
    with broker_proxy(with_netloc(amqp_url, user=user, password=password)) as (proxy, proxied):
        app = ConsumerApp(name="rotated", schema=schema, amqp_url=proxied, concurrency=1)
        handled: list[str] = []

        @app.handler(exchange=exchange, queue=broker.name("rotated"))
        def on_message(message: Message) -> None:
            handled.append(message.message_id)

        track(broker, app)
        runner, registry = instrumented_runner(
            app, app.settings(reconnect_max_s=0.3, unhealthy_after_s=1.0)
        )
        with (
            capture_logs() as logs,
            in_background(runner.run, runner.stop, name="consumer", ready=runner.ready),
        ):
            rabbitmqctl("change_password", user, uuid.uuid4().hex)
            proxy.cut()
            assert wait_for(lambda: not runner.liveness()[0], timeout_s=20)
            assert "the broker has refused" in runner.liveness()[1]
            scraped = generate_latest(registry).decode()
            assert 'outbox_relay_consumer_dependency_refused{service="broker"} 1.0' in scraped

            rabbitmqctl("change_password", user, password)
            assert wait_for(lambda: runner.liveness()[0] and runner.ready.is_set(), timeout_s=20)
            publish(broker, exchange, "k", b"{}", message_id="after")
            assert wait_for(lambda: handled == ["after"])
    refused = [e for e in logs if e["event"] == "consumer.dependency_refused"]
    assert 1 <= len(refused) <= 2, "at a bounded rate, not per try"
    assert password not in str(logs)
    scraped = generate_latest(registry).decode()
    assert 'outbox_relay_consumer_dependency_up{service="broker"} 1.0' in scraped
