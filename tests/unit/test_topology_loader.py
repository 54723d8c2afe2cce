"""Reading topology files: the example loads, and every bad input names file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from outbox_relay.cli import main
from outbox_relay.errors import TopologyError
from outbox_relay.topology import (
    Binding,
    QueueType,
    load_topology,
    parse_duration_ms,
    parse_topology,
)

EXAMPLE = Path(__file__).parents[2] / "deploy" / "topology.example.toml"

VALID = """\
[[exchanges]]
name = "orders"

[[queues]]
name = "billing"
type = "quorum"
bindings = [{ exchange = "orders", routing_key = "order.*" }]
[queues.retry]
delays = ["1s", "10s"]
max_attempts = 3
"""


class TestExample:
    def test_the_example_file_loads(self) -> None:
        topology = load_topology(EXAMPLE)
        assert [e.name for e in topology.exchanges] == ["orders", "orders.unroutable"]
        assert topology.exchanges[0].alternate_exchange == "orders.unroutable"
        queues = {q.name: q for q in topology.queues}
        assert queues["billing"].type is QueueType.QUORUM
        assert queues["shipping"].type is QueueType.CLASSIC
        assert queues["shipping"].bindings == (Binding("orders", "order.*"),)
        assert queues["billing"].retry_queue_names() == (
            "billing.retry.1s",
            "billing.retry.10s",
            "billing.retry.1m",
            "billing.retry.10m",
        )
        assert queues["emails"].main_arguments()["x-max-priority"] == 10
        assert topology.undeclared_references() == ()

    def test_defaults(self) -> None:
        topology = parse_topology('[[exchanges]]\nname = "e"\n[[queues]]\nname = "q"\n')
        exchange, queue = topology.exchanges[0], topology.queues[0]
        assert (exchange.type, exchange.durable, exchange.alternate_exchange) == (
            "topic",
            True,
            None,
        )
        assert (queue.type, queue.bindings, queue.retry) == (QueueType.CLASSIC, (), None)
        binding = parse_topology('[[queues]]\nname = "q"\nbindings = [{exchange = "e"}]\n')
        assert binding.queues[0].bindings == (Binding("e", "#"),)


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "ms"),
        [("250ms", 250), ("1s", 1_000), ("1.5s", 1_500), ("10m", 600_000), ("2h", 7_200_000),
         (3, 3_000), (0.5, 500)],
    )  # fmt: skip
    def test_durations(self, text: object, ms: int) -> None:
        assert parse_duration_ms(text) == ms

    @pytest.mark.parametrize("text", ["0s", 0, -1, "1.5ms"])
    def test_durations_must_be_positive_whole_milliseconds(self, text: object) -> None:
        with pytest.raises(ValueError, match=r"positive|whole"):
            parse_duration_ms(text)

    @pytest.mark.parametrize("text", ["soon", "-1s", "10 days", "", True])
    def test_other_values_are_not_durations(self, text: object) -> None:
        with pytest.raises((TypeError, ValueError), match="not a duration"):
            parse_duration_ms(text)


def _error(text: str) -> str:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, source="topo.toml")
    return str(info.value)


class TestBadInput:
    def test_unknown_key_names_the_file_key_line_and_allowed_keys(self) -> None:
        message = _error(VALID.replace("max_attempts = 3", "max_attempts = 3\nmax_atempts = 4"))
        assert message.startswith("topo.toml: queues[0].retry.max_atempts (line 11): ")
        assert "unknown key 'max_atempts'" in message
        assert "delays, max_attempts" in message

    def test_unknown_top_level_key(self) -> None:
        assert "unknown key 'queue'" in _error('[[queue]]\nname = "q"\n')

    def test_wrong_type(self) -> None:
        message = _error(VALID.replace('type = "quorum"', "type = 2"))
        assert "queues[0].type (line 6): 2 is an integer, expected a string" in message

    def test_a_boolean_is_not_an_integer(self) -> None:
        message = _error(VALID.replace("max_attempts = 3", "max_attempts = true"))
        assert "queues[0].retry.max_attempts" in message
        assert "expected an integer" in message

    def test_duplicate_queue_name(self) -> None:
        message = _error(VALID + '\n[[queues]]\nname = "billing"\n')
        assert "topo.toml: queues[1].name (line 13): " in message
        assert "'billing' is declared twice: give each queue its own name" in message

    def test_duplicate_exchange_name(self) -> None:
        message = _error(VALID + '\n[[exchanges]]\nname = "orders"\n')
        assert "exchanges[1].name" in message
        assert "declared twice" in message

    def test_delay_not_positive(self) -> None:
        message = _error(VALID.replace('"10s"', '"0s"'))
        assert "topo.toml: queues[0].retry.delays[1] (line 9): '0s' is not positive" in message

    def test_negative_number_of_seconds(self) -> None:
        assert "is not positive" in _error(VALID.replace('"10s"', "-10"))

    def test_unknown_queue_type(self) -> None:
        message = _error(VALID.replace('"quorum"', '"stream"'))
        assert "'stream' is not a queue type: use 'classic' or 'quorum'" in message

    def test_missing_name(self) -> None:
        message = _error('[[queues]]\ntype = "classic"\n')
        assert "queues[0].name (line 1): 'name' is required" in message

    def test_max_priority(self) -> None:
        topology = parse_topology(VALID.replace('type = "quorum"', "max_priority = 5"))
        assert topology.queues[0].max_priority == 5
        assert "queues[0].max_priority (line 6): 'high' is a string, expected an integer" in (
            _error(VALID.replace('type = "quorum"', 'max_priority = "high"'))
        )
        message = _error(VALID.replace('type = "quorum"', "max_priority = 256"))
        assert "queues[0] (line 4): queue 'billing': max_priority is 256, it must be 1 to 255" in (
            message
        )
        message = _error(VALID.replace('type = "quorum"', 'type = "quorum"\nmax_priority = 5'))
        assert "max_priority needs type = 'classic'" in message

    def test_model_errors_name_the_key(self) -> None:
        message = _error(VALID.replace("max_attempts = 3", "max_attempts = 0"))
        assert "topo.toml: queues[0].retry (line 8): max_attempts is 0" in message

    def test_bindings_must_be_tables(self) -> None:
        message = _error(VALID.replace('{ exchange = "orders", routing_key = "order.*" }', '"x"'))
        assert (
            "queues[0].bindings (line 7): must be an array of tables: [[queues.bindings]]"
            in message
        )

    def test_invalid_toml(self) -> None:
        message = _error("[[queues]\n")
        assert message.startswith("topo.toml: not valid TOML")

    def test_a_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(TopologyError, match="cannot read the topology file"):
            load_topology(tmp_path / "absent.toml")


class TestCli:
    def test_an_invalid_file_exits_2_before_connecting(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.toml"
        path.write_text(VALID.replace('"10s"', '"-10s"'))
        # An unroutable URL: the command must fail on the file, never reach the broker.
        result = CliRunner().invoke(
            main, ["topology", "plan", str(path), "--amqp-url", "amqp://nobody@192.0.2.1/%2F"]
        )
        assert result.exit_code == 2
        assert f"{path}: queues[0].retry.delays[1]" in result.output
        assert "not a duration" in result.output
