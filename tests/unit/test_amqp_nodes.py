"""Reading a list of RabbitMQ nodes from --amqp-url, and the order connections try them."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from outbox_relay.amqp_nodes import NodeListError, node_of, split_urls, vhost_of
from outbox_relay.broker_nodes import BrokerNodes, Node, NodeInUse
from outbox_relay.cli.net import amqp_url_option
from outbox_relay.errors import BrokerUnavailableError, ConfigurationError
from outbox_relay.observability.relay_metrics import RelayMetrics
from outbox_relay.urls import redact_url, url_problem

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,8}){0,2}", fullmatch=True)
ports = st.integers(1, 65535)
passwords = st.text(
    st.characters(codec="ascii", exclude_characters="@/?#%,", min_codepoint=33), min_size=1
)


class TestSplit:
    def test_one_url_is_one_node(self) -> None:
        assert split_urls("amqp://u:p@h:5672/v") == ("amqp://u:p@h:5672/v",)

    def test_comma_separated_urls(self) -> None:
        assert split_urls("amqp://u:p@a/v, amqps://u:p@b:5671/v") == (
            "amqp://u:p@a/v",
            "amqps://u:p@b:5671/v",
        )

    def test_whitespace_separated_urls(self) -> None:
        assert split_urls("amqp://a/v amqp://b/v\n") == ("amqp://a/v", "amqp://b/v")

    def test_kombu_hosts_share_credentials_vhost_and_query(self) -> None:
        assert split_urls("amqp://u:p@h1:5672,h2:5673/v?heartbeat=5") == (
            "amqp://u:p@h1:5672/v?heartbeat=5",
            "amqp://u:p@h2:5673/v?heartbeat=5",
        )

    def test_commas_in_the_query_stay_in_their_url(self) -> None:
        url = "amqps://h1/v?ssl_options={'ca_certs':'/ca.pem','server_hostname':'h1'}"
        assert split_urls(url) == (url,)

    def test_comma_in_a_password_is_not_a_host(self) -> None:
        assert split_urls("amqp://u:p,w@h/v") == ("amqp://u:p,w@h/v",)

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("", "no RabbitMQ URL"),
            ("  ", "no RabbitMQ URL"),
            ("amqp://a/v,,amqp://b/v", "empty element"),
            ("amqp://a/v,", "empty element"),
            ("amqp://u:p@a,,b/v", "empty host"),
            ("amqp://u:p@a,/v", "empty host"),
            ("amqp://a/v,http://b/v", "start with amqp://"),
            ("amqp://a/one,amqp://b/two", "different vhosts"),
            ("amqp://a:5672/v,amqp://A/v", "listed twice"),
            ("amqp://u:p@a,a:5672/v", "listed twice"),
        ],
    )
    def test_bad_lists_are_refused_with_the_fix(self, text: str, says: str) -> None:
        with pytest.raises(NodeListError, match=says):
            split_urls(text)

    def test_refusals_never_quote_a_password(self) -> None:
        with pytest.raises(NodeListError) as caught:
            split_urls("amqp://u:sekrit@a/v,ftp://u:sekrit@b/v")
        assert "sekrit" not in str(caught.value)

    def test_vhost_and_node_names(self) -> None:
        assert vhost_of("amqp://h") == "/"
        assert vhost_of("amqp://h/%2F") == "/"
        assert vhost_of("amqp://h/orders?heartbeat=5") == "orders"
        assert node_of("amqp://u:p@h") == "h:5672"
        assert node_of("amqps://u:p@h/v") == "h:5671"
        assert node_of("amqp://[::1]:5673/v") == "[::1]:5673"

    @given(
        user=st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        password=passwords,
        nodes=st.lists(st.tuples(hosts, ports), min_size=1, max_size=5, unique_by=lambda n: n),
        vhost=st.from_regex(r"[a-z]{0,6}", fullmatch=True),
        kombu=st.booleans(),
    )
    def test_every_spelling_yields_the_nodes_in_order(
        self,
        user: str,
        password: str,
        nodes: list[tuple[str, int]],
        vhost: str,
        kombu: bool,
    ) -> None:
        expected = tuple(f"amqp://{user}:{password}@{h}:{p}/{vhost}" for h, p in nodes)
        if kombu:
            text = f"amqp://{user}:{password}@" + ",".join(f"{h}:{p}" for h, p in nodes)
            text += f"/{vhost}"
        else:
            text = ",".join(expected)
        assert split_urls(text) == expected
        assert [node_of(url) for url in expected] == [f"{h}:{p}" for h, p in nodes]
        redacted = redact_url(text)
        assert password not in redacted.replace(f"{user}:***", "") or len(password) < 3
        assert url_problem(text) is None


class TestRedaction:
    def test_each_url_of_a_list_is_redacted(self) -> None:
        assert redact_url("amqp://u:pw@h1/v,amqp://u:pw@h2/v") == (
            "amqp://u:***@h1/v,amqp://u:***@h2/v"
        )

    def test_several_hosts_in_one_url_keep_their_ports(self) -> None:
        query = "?target_session_attrs=read-write"
        assert redact_url(f"postgresql://u:pw@h1:5432,h2:5433/db{query}") == (
            f"postgresql://u:***@h1:5432,h2:5433/db{query}"
        )

    def test_a_bad_url_in_a_list_is_found(self) -> None:
        assert "not a number" in (url_problem("amqp://a/v,amqp://b:x/v") or "")


class TestOrder:
    URL = "amqp://a/v,amqp://b/v,amqp://c/v"

    def test_first_connection_goes_to_the_first_node(self) -> None:
        seen: list[str] = []
        nodes = BrokerNodes(self.URL, on_node=seen.append)
        assert nodes.open(lambda node: node.name) == "a:5672"
        assert seen == ["a:5672"]
        assert nodes.current is not None
        assert nodes.current.name == "a:5672"

    def test_next_connection_starts_after_the_node_used_last(self) -> None:
        nodes = BrokerNodes(self.URL)
        nodes.open(lambda node: node.name)
        assert [n.name for n in nodes.order()] == ["b:5672", "c:5672", "a:5672"]
        assert nodes.open(lambda node: node.name) == "b:5672"

    def test_ordered_url_lists_the_next_node_first(self) -> None:
        nodes = BrokerNodes(self.URL)
        nodes.open(lambda node: node.name)
        assert nodes.ordered_url() == "amqp://b/v,amqp://c/v,amqp://a/v"

    def test_a_failing_node_is_passed_over_at_once(self) -> None:
        tried: list[str] = []

        def connect(node: Node) -> str:
            tried.append(node.name)
            if node.name != "c:5672":
                raise BrokerUnavailableError(f"{node.name} refused")
            return node.name

        nodes = BrokerNodes(self.URL)
        assert nodes.open(connect) == "c:5672"
        assert tried == ["a:5672", "b:5672", "c:5672"]
        # After c: a is next, then b, and c (the one in use last) comes last.
        assert [n.name for n in nodes.order()] == ["a:5672", "b:5672", "c:5672"]

    def test_all_failing_raises_the_last_error(self) -> None:
        def connect(node: Node) -> str:
            raise BrokerUnavailableError(f"{node.name} refused")

        nodes = BrokerNodes(self.URL)
        with pytest.raises(BrokerUnavailableError, match="c:5672 refused"):
            nodes.open(connect)
        # The next attempt starts where this one would have gone on: a again.
        assert nodes.order()[0].name == "a:5672"

    def test_a_node_that_stays_down_is_warned_about_once(self) -> None:
        def connect(node: Node) -> str:
            if node.name == "a:5672":
                raise OSError("Connection refused")
            return node.name

        nodes = BrokerNodes(self.URL)
        with capture_logs() as logs:
            for _ in range(3):
                nodes.open(connect, errors=(OSError,))
                nodes._next = 0  # start at the dead node each time
        warned = [e for e in logs if e["event"] == "broker.node_unavailable"]
        assert [e["log_level"] for e in warned] == ["warning", "debug", "debug"]
        assert warned[0]["error"] == "Connection refused"

    def test_other_errors_are_not_swallowed(self) -> None:
        def connect(node: Node) -> str:
            raise KeyError(node.name)

        with pytest.raises(KeyError):
            BrokerNodes(self.URL).open(connect)

    def test_bad_list_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError, match="different vhosts"):
            BrokerNodes("amqp://u:pw@a/x,amqp://u:pw@b/y")


class TestOption:
    @staticmethod
    def _run(args: list[str], env: dict[str, str] | None = None) -> str:
        @click.command()
        @amqp_url_option
        def show(amqp_url: str) -> None:
            click.echo(amqp_url)

        result = CliRunner().invoke(show, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output.strip()

    def test_repeated_option_is_joined(self) -> None:
        assert self._run(["--amqp-url", "amqp://a/v", "--amqp-url", "amqp://b/v"]) == (
            "amqp://a/v,amqp://b/v"
        )

    def test_environment_variable_takes_a_list(self) -> None:
        env = {"OUTBOX_RELAY_AMQP_URL": "amqp://a/v,amqp://b/v amqp://c/v"}
        assert split_urls(self._run([], env)) == ("amqp://a/v", "amqp://b/v", "amqp://c/v")

    def test_default_is_one_url(self) -> None:
        assert self._run([]).startswith("amqp://")


class TestNodeInUse:
    def test_the_metric_moves_to_the_new_node(self) -> None:
        registry = CollectorRegistry()
        metrics = RelayMetrics(registry)
        in_use = NodeInUse(on_change=metrics.connected_to)
        in_use.connected_to("a:5672")
        in_use.connected_to("b:5672")
        value = registry.get_sample_value
        assert value("outbox_relay_broker_node", {"node": "a:5672"}) == 0
        assert value("outbox_relay_broker_node", {"node": "b:5672"}) == 1

    def test_readiness_names_the_node_once_there_is_one(self) -> None:
        in_use = NodeInUse()
        ready = in_use.readiness(lambda: (True, "connected"))
        assert ready() == (True, "connected")
        in_use.connected_to("b:5672")
        assert ready() == (True, "connected; broker node b:5672")
