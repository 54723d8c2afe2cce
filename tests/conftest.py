"""Fixtures for the integration and fault tiers: real services, isolated names.

Each test gets its own schema (dropped afterwards) and its own exchange and queue names
(deleted afterwards), so tests cannot see each other.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest
import structlog
from hypothesis import settings

from outbox_relay.store.schema import migrate
from outbox_relay.store.trial import trial_connection
from outbox_relay.urls import redact_url
from tests.support import services
from tests.support.broker import BrokerHelper
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.private_rabbit import PrivateRabbit, private_rabbit

# The consumer SDK's test fixtures (run_handler, outbox_test_connection), as users enable them.
pytest_plugins = ["outbox_relay.consumer.testing"]

# Shared, noisy machines: a slow example is not a failure.
settings.register_profile("outbox-relay", deadline=None)
settings.load_profile("outbox-relay")


_SERVICES = pytest.StashKey[dict[str, services.Found]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVICES] = {}


# Under pytest-xdist (make test) the services are found in the worker processes: each
# hands them to the controller, which prints the summary.
_WORKER_SERVICES = "outbox_relay_services"


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        found = session.config.stash.get(_SERVICES, {})
        output[_WORKER_SERVICES] = {name: [f.url, f.source] for name, f in found.items()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    found = node.config.stash.setdefault(_SERVICES, {})
    for name, (url, source) in node.workeroutput.get(_WORKER_SERVICES, {}).items():
        found.setdefault(name, services.Found(url, source))


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that configures logging (the CLI run in-process does, at its --log-level)
    must not change what later tests' capture_logs see."""
    config = structlog.get_config()
    yield
    structlog.configure(**config)


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with services.postgres_url() as found:
        url = found.url or ""
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            services.unavailable(
                f"PostgreSQL: cannot connect to {redact_url(url)} (from {found.source}): "
                f"{first_line(exc)}; start it or set {services.DATABASE_ENV}"
            )
        request.config.stash[_SERVICES]["PostgreSQL"] = found
        yield url


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with services.amqp_url() as found:
        url = found.url or ""
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
        except pika.exceptions.AMQPError as exc:
            services.unavailable(
                f"RabbitMQ: cannot connect to {redact_url(url)} (from {found.source}): "
                f"{exc!r}; start it or set {services.AMQP_ENV}"
            )
        request.config.stash[_SERVICES]["RabbitMQ"] = found
        yield url


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A missing service skips every test that needs it for the same reason: report those
    skips at one place so ``-ra`` folds them into one line instead of one per test."""
    report: pytest.TestReport = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        _path, _line, reason = report.longrepr
        if reason.startswith(services.SKIP_PREFIXES):
            report.longrepr = (
                services.__file__,
                services.unavailable.__code__.co_firstlineno,
                reason,
            )
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which services the integration and fault tiers ran against, and how many
    tests of each tier passed, so a green run shows it was not a run of skips."""
    found = terminalreporter.config.stash.get(_SERVICES, {})
    tiers = Counter(
        report.nodeid.split("/")[1]
        for report in terminalreporter.stats.get("passed", [])
        if report.nodeid.startswith("tests/") and report.nodeid.count("/") >= 2
    )
    if not found and not tiers:
        return
    terminalreporter.section("services and tiers")
    if found:
        terminalreporter.write_line(services.summary_line(found))
    if tiers:
        counts = ", ".join(f"{tier} {count}" for tier, count in sorted(tiers.items()))
        terminalreporter.write_line(f"passed per tier: {counts}")


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A fresh schema with the outbox migrated into it; dropped after the test."""
    name = unique_name("t")
    migrate(database_url, schema=name)
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(name))
        )


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        yield conn


@pytest.fixture
def outbox_test_connection(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The testing plugin's connection, to this suite's database (rolled back after)."""
    with trial_connection(database_url) as conn:
        yield conn


@pytest.fixture
def broker(amqp_url: str) -> Iterator[BrokerHelper]:
    """Declares test-owned exchanges and queues with unique names and deletes them after."""
    helper = BrokerHelper(amqp_url, prefix=unique_name("t"))
    yield helper
    helper.cleanup()


@pytest.fixture
def own_rabbit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the test's own, for tests that stop, restart or reconfigure the
    broker. ``@pytest.mark.rabbitmq_conf(max_message_size=65536)`` puts those
    ``rabbitmq.conf`` settings in force from the node's boot."""
    marker = request.node.get_closest_marker("rabbitmq_conf")
    settings = marker.kwargs if marker else {}
    config = "".join(f"{key} = {value}\n" for key, value in settings.items())
    directory = tmp_path / "rabbit"
    directory.mkdir()
    with private_rabbit(directory, config=config) as rabbit:
        yield rabbit


@pytest.fixture
def own_broker(own_rabbit: PrivateRabbit) -> Iterator[BrokerHelper]:
    """Like ``broker``, on the test's own node."""
    helper = BrokerHelper(own_rabbit.url, prefix=unique_name("t"))
    yield helper
    helper.cleanup()


@pytest.fixture
def own_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own, for tests that stop or restart the
    database; ``own_postgres.url`` names its ``postgres`` database, as superuser."""
    with private_postgres() as cluster:
        yield cluster
