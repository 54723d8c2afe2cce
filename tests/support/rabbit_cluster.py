"""A private three-node RabbitMQ cluster on 127.0.0.1, for the cluster tier.

Three private nodes (tests/support/private_rabbit.py: own node names, AMQP and
distribution ports, data and logs) share one Erlang cookie; the second and third join
the first (``rabbitmqctl join_cluster``). Nothing of the machine's own RabbitMQ is
touched. A node is stopped and started again with ``stop_app`` / ``start_app`` (its
connections are closed and its quorum queue members stop, as in a rolling restart), or
crashed with SIGKILL and started again (the kernel closes its sockets; its peers see the
distribution connection drop).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.private_rabbit import PrivateRabbit, private_rabbit

CLUSTER_SIZE = 3
# net_ticktime stays at its default (60 s): a stop_app says goodbye, and a node killed
# here has its distribution connections closed by the kernel, so its peers notice both
# at once; the tick would matter only for a node that goes silent (not tested here).
CONFIG = "cluster_partition_handling = pause_minority\n"


@dataclass
class RabbitCluster:
    nodes: list[PrivateRabbit]
    stopped: set[str]
    boot_s: float = 0.0  # how long starting and joining the nodes took

    def urls(self, order: list[int] | None = None) -> str:
        """The nodes' URLs, comma-separated, in ``order`` (indexes) or as started."""
        chosen = order if order is not None else list(range(len(self.nodes)))
        return ",".join(self.nodes[i].url for i in chosen)

    def index_of_port(self, port: int) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.port == port)

    def stop(self, index: int) -> float:
        """``stop_app`` on node ``index``; returns how long the command took (the node
        closes its connections early in it, its queue members stop later)."""
        node = self.nodes[index]
        started = time.monotonic()
        node.rabbitmqctl("stop_app")
        self.stopped.add(node.node)
        return time.monotonic() - started

    def kill(self, index: int) -> float:
        """SIGKILL node ``index``'s Erlang VM (a crash); returns how long that took."""
        node = self.nodes[index]
        started = time.monotonic()
        node.kill()
        self.stopped.add(node.node)
        return time.monotonic() - started

    def respawn(self, index: int) -> None:
        """Start a killed node again, with its data; it rejoins the cluster by itself."""
        node = self.nodes[index]
        node.spawn()
        self.stopped.discard(node.node)

    def start(self, index: int) -> None:
        node = self.nodes[index]
        node.rabbitmqctl("start_app")
        node.rabbitmqctl("await_startup")
        self.stopped.discard(node.node)

    def leader(self, queue: str) -> int | None:
        """The index of the node leading quorum queue ``queue`` (None: no leader now),
        as a running node sees it."""
        up = next(n for n in self.nodes if n.node not in self.stopped)
        listed = up.rabbitmqctl("list_queues", "name", "leader", "--no-table-headers", "-q")
        for line in listed.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return next((i for i, n in enumerate(self.nodes) if n.node == leader), None)
        return None

    def quorum_status(self, queue: str) -> str:
        """``rabbitmq-queues quorum_status``: each member's Raft state and indexes, as a
        running node sees them (for a failure's message)."""
        up = next(n for n in self.nodes if n.node not in self.stopped)
        try:
            return up.cli("rabbitmq-queues", "quorum_status", queue, timeout_s=20)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"quorum_status {queue}: {exc}"

    def await_quorum_plus_one(self, index: int) -> float:
        """Wait until stopping node ``index`` leaves every quorum queue a majority of
        members online (``rabbitmq-upgrade await_online_quorum_plus_one``, what a rolling
        restart runs before each node); returns how long that took."""
        started = time.monotonic()
        self.nodes[index].cli("rabbitmq-upgrade", "await_online_quorum_plus_one", "-t", "60")
        return time.monotonic() - started

    def messages(self, queues: list[str]) -> dict[str, int]:
        """How many messages each of ``queues`` holds (-1: no such queue)."""
        up = next(n for n in self.nodes if n.node not in self.stopped)
        listed = up.rabbitmqctl("list_queues", "name", "messages", "--no-table-headers", "-q")
        counts = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
        return {q: int(counts.get(q, -1)) for q in queues}

    def running_nodes(self) -> str:
        up = next(n for n in self.nodes if n.node not in self.stopped)
        return up.rabbitmqctl("cluster_status")


def _start_all(directory: Path, stack: contextlib.ExitStack, cookie: str) -> list[PrivateRabbit]:
    """Boot the nodes in parallel (each takes seconds, mostly waiting on Erlang)."""
    nodes: list[PrivateRabbit | None] = [None] * CLUSTER_SIZE
    errors: list[BaseException] = []
    lock = threading.Lock()

    def boot(i: int) -> None:
        path = directory / f"node{i}"
        path.mkdir()
        try:
            manager = private_rabbit(path, config=CONFIG, cookie=cookie)
            node = manager.__enter__()
        except BaseException as exc:  # reported once every boot ended
            errors.append(exc)
            return
        with lock:
            nodes[i] = node
            stack.push(manager.__exit__)

    threads = [threading.Thread(target=boot, args=(i,)) for i in range(CLUSTER_SIZE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [n for n in nodes if n is not None]


@contextlib.contextmanager
def rabbit_cluster(directory: Path) -> Iterator[RabbitCluster]:
    """Three clustered private nodes, their files under ``directory``; on exit, whatever
    happened, every node is stopped and its data removed (its logs are left)."""
    with contextlib.ExitStack() as stack:
        # Runs last, after the nodes stopped: their data goes, their logs stay with the
        # test's other files (pytest keeps the last few runs'), for a failure's story.
        for i in range(CLUSTER_SIZE):
            stack.callback(shutil.rmtree, directory / f"node{i}" / "mnesia", ignore_errors=True)
        started = time.monotonic()
        nodes = _start_all(directory, stack, secrets.token_hex(16))
        first = nodes[0]
        for node in nodes[1:]:
            node.rabbitmqctl("stop_app")
            node.rabbitmqctl("join_cluster", first.node)
            node.rabbitmqctl("start_app")
            node.rabbitmqctl("await_startup")
        cluster = RabbitCluster(nodes=nodes, stopped=set(), boot_s=time.monotonic() - started)
        yield cluster
