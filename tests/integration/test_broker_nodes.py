"""Several broker nodes against a real broker: a node that refuses is passed over at once,
and the node in use is logged and counted in the metric."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from outbox_relay.cli import main
from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.runner import Runner
from outbox_relay.observability.consumer_metrics import ConsumerMetrics
from outbox_relay.observability.relay_metrics import RelayMetrics
from outbox_relay.publisher import Publisher
from outbox_relay.topology import ExchangeSpec, Topology, apply
from tests.support.broker import BrokerHelper
from tests.support.consumer import track
from tests.support.http import free_port, get, samples
from tests.support.relay import wait_for
from tests.support.threads import in_background

pytestmark = pytest.mark.integration
RUN = (sys.executable, "-m", "outbox_relay", "run", "--log-format", "json")


def _dead_node(amqp_url: str) -> tuple[str, str]:
    """A URL like ``amqp_url`` to a port nothing listens on, and its node name."""
    parts = urlsplit(amqp_url)
    port = free_port()
    userinfo = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}").geturl(), f"127.0.0.1:{port}"


def test_publisher_passes_over_a_refusing_node_and_reports_the_one_in_use(amqp_url: str) -> None:
    dead, dead_name = _dead_node(amqp_url)
    live_name = f"{urlsplit(amqp_url).hostname}:{urlsplit(amqp_url).port or 5672}"
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    publisher = Publisher(url=f"{dead},{amqp_url}", on_node=metrics.connected_to)
    try:
        started = time.monotonic()
        with capture_logs() as logs:
            publisher.connect()
        assert time.monotonic() - started < 5  # a refusing node costs no backoff
        assert publisher.connected
        assert publisher.nodes.current is not None
        assert publisher.nodes.current.name == live_name
        events = {(e["event"], e.get("node")) for e in logs}
        assert ("broker.node_unavailable", dead_name) in events
        assert ("broker.node_connected", live_name) in events
        assert "guest" not in str([e for e in logs if e["event"].startswith("broker.")]).replace(
            "guest:***", ""
        )
        assert registry.get_sample_value("outbox_relay_broker_node", {"node": live_name}) == 1
        # The next connection starts after the live node: the dead one first, then back.
        assert [n.name for n in publisher.nodes.order()] == [dead_name, live_name]
        publisher.connect()
        assert publisher.connected
    finally:
        publisher.close()


def test_topology_apply_takes_a_list(amqp_url: str, broker: BrokerHelper) -> None:
    dead, _ = _dead_node(amqp_url)
    name = broker.name("nodes")
    broker.track_exchange(name)
    report = apply(f"{dead},{amqp_url}", Topology(exchanges=(ExchangeSpec(name=name),)))
    assert [item.label() for item in report.created] == [f"exchange {name!r}"]


def test_the_relay_names_its_node_in_readyz_and_the_metric(
    database_url: str, amqp_url: str, schema: str
) -> None:
    """`outbox-relay run` given the option twice, a refusing node first."""
    dead, _ = _dead_node(amqp_url)
    live_name = f"{urlsplit(amqp_url).hostname}:{urlsplit(amqp_url).port or 5672}"
    port = free_port()
    env = {**os.environ, "OUTBOX_RELAY_HTTP_PORT": str(port), "OUTBOX_RELAY_SCHEMA": schema}
    relay = subprocess.Popen(
        [*RUN, "--database-url", database_url, "--amqp-url", dead, "--amqp-url", amqp_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Ready may be answered a moment before the node is recorded (the connection is
        # open; its channel is still opening): wait for the node rather than the 200 alone.
        def named() -> bool:
            code, body = get(port, "/readyz")
            return code == 200 and f"broker node {live_name}" in body

        assert wait_for(named, timeout_s=15), get(port, "/readyz")
        metric = f"outbox_relay_broker_node{{node={live_name}}}"
        assert samples(port)[metric] == 1
    finally:
        relay.send_signal(signal.SIGTERM)
        _, log = relay.communicate(timeout=20)
    assert relay.returncode == 0, log[-3000:]
    assert "broker.node_unavailable" in log
    assert "guest:guest" not in log


def test_cli_topology_takes_the_option_repeated(
    amqp_url: str, broker: BrokerHelper, tmp_path: Path
) -> None:
    dead, _ = _dead_node(amqp_url)
    name = broker.name("cli")
    broker.track_exchange(name)
    path = tmp_path / "topology.toml"
    path.write_text(f'[[exchanges]]\nname = "{name}"\n')
    args = ["topology", "apply", str(path), "--amqp-url", dead, "--amqp-url", amqp_url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert name in result.output


def test_a_bad_list_is_refused_before_connecting(amqp_url: str, tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    path.write_text('[[exchanges]]\nname = "never-declared"\n')
    other_vhost = amqp_url.rpartition("/")[0] + "/elsewhere"
    result = CliRunner().invoke(
        main, ["topology", "apply", str(path), "--amqp-url", f"{amqp_url},{other_vhost}"]
    )
    assert result.exit_code != 0
    assert "different vhosts" in result.output
    assert "guest:guest" not in result.output


def test_the_consumer_passes_over_a_refusing_node_and_reports_the_one_in_use(
    amqp_url: str, broker: BrokerHelper
) -> None:
    dead, _ = _dead_node(amqp_url)
    live_name = f"{urlsplit(amqp_url).hostname}:{urlsplit(amqp_url).port or 5672}"
    app = ConsumerApp(name=broker.name("nodes"), amqp_url=f"{dead},{amqp_url}")

    @app.handler(exchange=broker.exchange(), queue=broker.name("nodes"), bindings=["#"])
    def on_message(message: Message) -> None:
        pass

    track(broker, app)
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, handlers=[(h.queue, h.name) for h in app.handlers])
    runner = Runner(app, app.settings(), observer=metrics)
    with in_background(
        runner.run, runner.stop, name="consumer", ready=runner.ready, stop_within_s=20
    ):
        value = registry.get_sample_value
        assert value("outbox_relay_consumer_broker_node", {"node": live_name}) == 1
        ready, detail = runner.readiness()
        assert ready, detail
        assert detail.endswith(f"; broker node {live_name}"), detail
