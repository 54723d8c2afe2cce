"""A private RabbitMQ node for tests that stop, restart or reconfigure the broker.

The shared broker is never restarted or reconfigured by a test. A test that needs a
broker outage, or a broker configured its own way (a lower ``max_message_size``, TLS
listeners), starts a node of its own: a random node name, its own AMQP and distribution
ports on 127.0.0.1, its own data, logs, configuration (``rabbitmq.conf`` lines given by
the test, read at boot) and Erlang cookie under the test's ``tmp_path``, no plugins. It
registers with the host's epmd like any node and touches nothing else. It needs the
``rabbitmq-server`` package installed (the Debian scripts in /usr/lib/rabbitmq/bin are
used directly, so it runs as the current user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.http import free_port
from tests.support.services import unavailable

STARTUP_TIMEOUT_S = 90
COMMAND_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
_DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def _script(name: str) -> str | None:
    """The RabbitMQ script itself: Debian's /usr/sbin wrappers switch to the rabbitmq
    user, who could not read a test's ``tmp_path``."""
    debian = _DEBIAN_SCRIPTS / name
    if debian.is_file():
        return str(debian)
    return shutil.which(name)


@dataclass
class PrivateRabbit:
    node: str
    port: int
    env: dict[str, str]
    log_file: Path
    ctl: str
    server_script: str = ""
    server: subprocess.Popen[bytes] | None = None  # the running node's process

    def spawn(self) -> None:
        """Start the node's server process (in a session of its own) and wait for it."""
        directory = self.log_file.parent
        with self.log_file.open("ab") as log:
            self.server = subprocess.Popen(
                [self.server_script],
                env=self.env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _await_startup(self, self.server)

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM and its helpers: a crash, no goodbye to its peers
        or clients (the kernel closes its sockets). :meth:`spawn` starts it again with
        its data."""
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(STOP_TIMEOUT_S)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def rabbitmqctl(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        return self.cli("rabbitmqctl", *args, timeout_s=timeout_s)

    def cli(self, program: str, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        """Run one of RabbitMQ's command line tools (``rabbitmqctl``, ``rabbitmq-queues``,
        ``rabbitmq-upgrade``, ...) against this node; its output, or RuntimeError."""
        result = subprocess.run(
            [str(Path(self.ctl).with_name(program)), "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=self.env,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} -n {self.node} {' '.join(args)} exited {result.returncode}: "
                f"{(result.stdout + result.stderr).strip()}\n{self.log_tail()}"
            )
        return result.stdout

    def restart_app(self, *, down_s: float = 1.0) -> None:
        """Stop the RabbitMQ application (every connection drops), wait, start it again."""
        try:
            self.rabbitmqctl("stop_app")
            time.sleep(down_s)
        finally:
            self.rabbitmqctl("start_app")
            self.rabbitmqctl("await_startup")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _environment(directory: Path, node: str, port: int, config: str) -> dict[str, str]:
    (directory / "mnesia").mkdir()
    (directory / "log").mkdir()
    (directory / "rabbitmq.conf").write_text(config)
    (directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's node name
    (directory / "enabled_plugins").write_text("[].\n")
    return {
        **os.environ,
        "HOME": str(directory),  # the Erlang cookie, for the node and rabbitmqctl
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def _await_startup(rabbit: PrivateRabbit, server: subprocess.Popen[bytes]) -> None:
    """``await_startup`` needs the Erlang node to be up already: retry until it is."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(
                f"the private RabbitMQ node {rabbit.node} exited {server.returncode} while "
                f"starting:\n{rabbit.log_tail()}"
            )
        try:
            rabbit.rabbitmqctl("await_startup", "--timeout", "10", timeout_s=20)
        except (RuntimeError, subprocess.TimeoutExpired):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        else:
            return


def _stop(rabbit: PrivateRabbit, server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            rabbit.rabbitmqctl("stop", timeout_s=STOP_TIMEOUT_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(STOP_TIMEOUT_S)
    # The node's own helpers (erl_child_setup, inet_gethost) share its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def private_rabbit(
    directory: Path, *, config: str = "", cookie: str | None = None
) -> Iterator[PrivateRabbit]:
    """Start a private RabbitMQ node keeping its files in ``directory``, with ``config``
    (``rabbitmq.conf`` lines, e.g. ``max_message_size = 65536``) in force from its boot;
    stopped on exit, whatever the test did. Skips (fails under CI) when RabbitMQ is not
    installed. ``cookie``: the Erlang cookie, the same for the nodes of one cluster
    (tests/support/rabbit_cluster.py)."""
    server_script, ctl = _script("rabbitmq-server"), _script("rabbitmqctl")
    if server_script is None or ctl is None:
        unavailable(
            "RabbitMQ is not installed here (no rabbitmq-server): this test starts a private "
            "node; install it (Debian: apt-get install rabbitmq-server)"
        )
    node = f"outbox-test-{uuid.uuid4().hex[:8]}@localhost"
    port = free_port()
    env = _environment(directory, node, port, config)
    if cookie is not None:
        cookie_file = directory / ".erlang.cookie"  # in HOME, where Erlang reads it
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)
    log_file = directory / "server.log"
    rabbit = PrivateRabbit(
        node=node, port=port, env=env, log_file=log_file, ctl=ctl, server_script=server_script
    )
    try:
        rabbit.spawn()
        yield rabbit
    finally:
        if rabbit.server is not None:
            _stop(rabbit, rabbit.server)
