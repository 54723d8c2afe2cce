"""Every CLI command answers bad input with one error line that names the thing and the
fix, the documented exit code, no traceback, and never a password (issue 22, item 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from outbox_relay.cli import main
from tests.support.broker import BrokerHelper
from tests.unit.test_redaction import MARKER, passwords

pytestmark = pytest.mark.integration

EXIT_FAILED, EXIT_USAGE, EXIT_MISCONFIGURED = 1, 2, 3
UNREACHABLE = "127.0.0.1:1"
LONG = "q" * 300

# The shapes that broke redaction before: a delimiter right before the secret's middle.
SHAPES = [f"Hunter2{c}{MARKER}" for c in "@/?#"] + [f"1234/{MARKER}", f"{MARKER}@x:y"]


def with_shapes(**fixed: str) -> Any:
    def decorate(test: Any) -> Any:
        for shape in SHAPES:
            for encoded in (False, True):
                test = example(password=shape, encoded=encoded, **fixed)(test)
        return test

    return decorate


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_clean_error(result: Result, code: int, *words: str) -> str:
    """Exit ``code``, no traceback, exactly one error line (click's usage lines aside)."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error: ")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def topology_file(tmp_path: Path, broker: BrokerHelper) -> str:
    path = tmp_path / "topology.toml"
    path.write_text(f'[[queues]]\nname = "{broker.name("sweep")}"\n')
    return str(path)


def database_commands() -> list[list[str]]:
    return [["migrate"], ["status"], ["failed", "list"], ["failed", "retry", "--yes"]]


def broker_commands(topology_file: str) -> list[list[str]]:
    return [
        ["dead-letters", "list", "q"],
        ["dead-letters", "replay", "q", "--yes"],
        ["topology", "plan", topology_file],
        ["topology", "apply", topology_file],
    ]


class TestNoPasswordLeaks:
    @settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @with_shapes(scheme="amqp")
    @given(password=passwords, encoded=st.booleans(), scheme=st.sampled_from(["amqp", "amqps"]))
    def test_broker_commands(
        self, topology_file: str, password: str, encoded: bool, scheme: str
    ) -> None:
        secret = quote(password, safe="") if encoded else password
        url = f"{scheme}://user:{secret}@{UNREACHABLE}/%2F"
        for command in broker_commands(topology_file):
            result = invoke(*command, "--amqp-url", url)
            assert result.exit_code in (EXIT_FAILED, EXIT_USAGE), result.output
            assert isinstance(result.exception, SystemExit), repr(result.exception)
            assert password not in result.output
            assert MARKER not in result.output

    @settings(max_examples=100)
    @with_shapes()
    @given(password=passwords, encoded=st.booleans())
    def test_database_commands(self, password: str, encoded: bool) -> None:
        secret = quote(password, safe="") if encoded else password
        url = f"postgresql://user:{secret}@{UNREACHABLE}/db"
        for command in database_commands():
            result = invoke(*command, "--database-url", url)
            assert result.exit_code in (EXIT_FAILED, EXIT_USAGE), result.output
            assert isinstance(result.exception, SystemExit), repr(result.exception)
            assert password not in result.output
            assert MARKER not in result.output

    def test_the_relay_refuses_a_malformed_url_before_it_starts(self, amqp_url: str) -> None:
        for url in (
            "postgresql://u:Hunter2@Secret99@db/app",
            "postgresql://u:Hunter2/Secret99@db/app",
        ):
            result = invoke("run", "--database-url", url, "--amqp-url", amqp_url)
            line = assert_clean_error(result, EXIT_USAGE, "--database-url", "percent-encode")
            assert "Hunter2" not in result.output, line
            assert "Secret99" not in result.output, line


class TestSweep:
    """Wrong URLs, unreachable services, bad names: one clear line, the right exit code."""

    @pytest.mark.parametrize(
        ("url", "code", "words"),
        [
            (f"postgresql://u:Hunter2@Secret99@{UNREACHABLE}/db", EXIT_USAGE, ["percent-encode"]),
            ("postgresql://u:pw@127.0.0.1:port/db", EXIT_USAGE, ["'port'"]),
            ("postgresql://u:p\x00w@127.0.0.1/db", EXIT_USAGE, ["NUL"]),
            (f"postgresql://u:pw@{UNREACHABLE}/db", EXIT_FAILED, ["refused", "PostgreSQL runs"]),
        ],
    )
    def test_database_commands_with_bad_urls(self, url: str, code: int, words: list[str]) -> None:
        for command in database_commands():
            assert_clean_error(invoke(*command, "--database-url", url), code, *words)

    @pytest.mark.parametrize("schema", ["a\x00b", "s" * 300, ""])
    def test_database_commands_with_bad_schema_names(self, database_url: str, schema: str) -> None:
        for command in [*database_commands(), ["run", "--amqp-url", "amqp://u@h/%2F"]]:
            result = invoke(*command, "--database-url", database_url, "--schema", schema)
            assert_clean_error(result, EXIT_USAGE, "--schema", "schema name")
        assert_clean_error(invoke("sql", "--schema", schema), EXIT_USAGE, "schema name")

    def test_database_commands_on_a_schema_without_the_outbox(self, database_url: str) -> None:
        for command in (["status"], ["failed", "list"]):
            result = invoke(*command, "--database-url", database_url, "--schema", "no_such_schema")
            assert_clean_error(result, EXIT_MISCONFIGURED, "outbox-relay migrate")

    @pytest.mark.parametrize(
        ("url", "code", "words"),
        [
            (f"amqp://u:Hunter2#Secret99@{UNREACHABLE}/%2F", EXIT_USAGE, ["percent-encode"]),
            (f"amqp://u:Hunter2?Secret99@{UNREACHABLE}/%2F", EXIT_USAGE, ["percent-encode"]),
            ("amqp://u:pw@127.0.0.1:port/%2F", EXIT_USAGE, ["'port'"]),
            ("amqp://u:p\x00w@127.0.0.1/%2F", EXIT_USAGE, ["NUL"]),
            (f"amqp://u:pw@{UNREACHABLE}/%2F", EXIT_FAILED, ["refused", "RabbitMQ runs"]),
        ],
    )
    def test_broker_commands_with_bad_urls(
        self, topology_file: str, url: str, code: int, words: list[str]
    ) -> None:
        for command in broker_commands(topology_file):
            assert_clean_error(invoke(*command, "--amqp-url", url), code, *words)
        for command in (["run", "--database-url", "postgresql://u@h/db"],):
            if code == EXIT_USAGE:
                assert_clean_error(invoke(*command, "--amqp-url", url), code, *words)

    def test_broker_commands_on_an_unknown_vhost(self, amqp_url: str, topology_file: str) -> None:
        url = amqp_url.rsplit("/", 1)[0] + "/no_such_vhost_outbox_relay"
        for command in broker_commands(topology_file):
            assert_clean_error(
                invoke(*command, "--amqp-url", url), EXIT_MISCONFIGURED, "no_such_vhost", "vhost"
            )

    @pytest.mark.parametrize("queue", [LONG, "q\x00x", "é" * 130])
    def test_dead_letters_with_bad_queue_names(self, amqp_url: str, queue: str) -> None:
        for action in (["list"], ["replay", "--yes"], ["purge", "--yes"], ["show"]):
            args = [*action[:1], queue, *(["m-1"] if action == ["show"] else action[1:])]
            result = invoke("dead-letters", *args, "--amqp-url", amqp_url)
            assert_clean_error(result, EXIT_USAGE, "QUEUE", "check the name")

    def test_dead_letters_of_a_queue_that_does_not_exist(self, amqp_url: str) -> None:
        result = invoke(
            "dead-letters", "list", "no_such_queue_outbox_relay", "--amqp-url", amqp_url
        )
        assert_clean_error(result, EXIT_FAILED, "does not exist", "check the name")

    def test_topology_with_a_queue_name_too_long(self, amqp_url: str, tmp_path: Path) -> None:
        path = tmp_path / "long.toml"
        path.write_text(f'[[queues]]\nname = "{LONG}"\n')
        for action in ("plan", "apply"):
            result = invoke("topology", action, str(path), "--amqp-url", amqp_url)
            assert_clean_error(result, EXIT_USAGE, "queue name")

    def test_consume_with_bad_input(self) -> None:
        app = "tests.support.consumer_app:app"
        cases = [
            (["consume", app, "--amqp-url", "amqp://u:a#b@h/%2F"], "percent-encode"),
            (["consume", app, "--database-url", "postgresql://u:p@h:x/db"], "'x'"),
            (["consume", app, "--schema", "a\x00b"], "NUL"),
            (["consume", "no_such_module:app"], "cannot import"),
            (["consume", "tests.support.consumer_app:nothing"], "not a ConsumerApp"),
        ]
        for args, words in cases:
            assert_clean_error(invoke(*args), EXIT_USAGE, words)
