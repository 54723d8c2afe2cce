"""The stage of a test that runs the relay as a process: its services, its schema and
broker names, the relays it starts (each killed at the end, whatever happened), the rows
it writes, and what arrived, counted.

A fault test then reads as the fault it injects and what it asserts::

    exchange, queue = scene.route()
    scene.insert(exchange, range(total))
    relay = scene.relay("--batch-size", "200")
    with stops_cleanly(relay):
        ...  # the fault
        scene.drained(relay)
    tally = scene.tally(queue, range(total))
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.broker import BrokerHelper
from tests.support.faults import CliProcess, RelayProcess, Tally, insert_rows, pending
from tests.support.relay import wait_for

# What a failed assertion shows of a process's log.
LOG_TAIL_CHARS = 4000
# A relay killed or frozen is replaced within about two seconds: a short lease, renewed
# often, and a short poll for the successor to find the rows.
FAST_FAILOVER_ARGS = ("--lease-ttl", "2", "--heartbeat-interval", "0.5", "--poll-interval", "0.1")


@dataclass
class Scene:
    """The services of a test (the shared ones, or a private node or cluster: see
    :meth:`on`), the test's schema and broker helper, and where processes log."""

    database_url: str
    amqp_url: str
    schema: str
    broker: BrokerHelper
    tmp_path: Path
    relays: list[RelayProcess] = field(default_factory=list)

    def on(
        self,
        *,
        database_url: str | None = None,
        schema: str | None = None,
        amqp_url: str | None = None,
        broker: BrokerHelper | None = None,
    ) -> Scene:
        """The same stage on other services (a test's private node or cluster); the
        relays it starts are still killed with this scene's."""
        return Scene(
            database_url or self.database_url,
            amqp_url or self.amqp_url,
            schema or self.schema,
            broker or self.broker,
            self.tmp_path,
            self.relays,
        )

    def route(self, binding: str = "#") -> tuple[str, str]:
        """A new exchange of the test's and a queue bound to it: (exchange, queue)."""
        exchange = self.broker.exchange()
        return exchange, self.broker.queue(bind=(exchange, binding))

    def relay(
        self, *args: str, database_url: str | None = None, amqp_url: str | None = None
    ) -> RelayProcess:
        """``outbox-relay run ARGS`` on this scene's schema, to its services or to the
        URLs given (a proxy's); killed when the test ends if it still runs."""
        relay = RelayProcess(
            database_url or self.database_url,
            amqp_url or self.amqp_url,
            self.schema,
            *args,
            log_dir=self.tmp_path,
        )
        self.relays.append(relay)
        return relay

    def insert(
        self, exchange: str, numbers: range, *, keys: int = 0, routing_key: str = "k"
    ) -> None:
        """Rows {"n": n, "key": ...} for each of ``numbers`` (see :func:`insert_rows`)."""
        insert_rows(
            self.database_url, self.schema, exchange, numbers, keys=keys, routing_key=routing_key
        )

    def pending(self) -> int:
        """Rows neither published nor dead."""
        return pending(self.database_url, self.schema)

    def publishing(self, *, below: int, timeout_s: float = 20) -> bool:
        """Whether fewer than ``below`` rows are pending within ``timeout_s``: the relay
        is at work on them."""
        return wait_for(lambda: self.pending() < below, timeout_s=timeout_s)

    def drained(self, relay: RelayProcess, *, timeout_s: float = 60) -> None:
        """Waits until no row is pending; the relay must still run (its log says why not)."""
        assert wait_for(lambda: self.pending() == 0 or not relay.alive, timeout_s=timeout_s), (
            relay.log_text()[-LOG_TAIL_CHARS:]
        )
        assert relay.alive, relay.log_text()[-LOG_TAIL_CHARS:]

    @contextlib.contextmanager
    def draining(self, relay: RelayProcess) -> Iterator[None]:
        """Runs the block; then, even when it failed, waits for ``relay`` to drain what is
        pending (see :meth:`drained`) and stops it: it must exit with 0."""
        with stops_cleanly(relay):
            try:
                yield
            finally:
                self.drained(relay)

    def tally(self, queue: str, expected: Iterable[int], *, quiet_s: float = 1.0) -> Tally:
        """What ``queue`` received until it stayed quiet for ``quiet_s``, against the
        numbers ``expected``."""
        tally = Tally(expected=set(expected))
        tally.add(self.broker.collect(queue, quiet_s=quiet_s))
        return tally

    def relay_through_restart(
        self, exchange: str, restart: Callable[[], object], *args: str, total: int
    ) -> tuple[RelayProcess, int]:
        """``total`` rows (20 keys), a relay at work on them, ``restart`` (of a service of
        the test's own) called mid-run; the relay drains the rest and stops cleanly.
        Returns the relay and the rows left when the restart began."""
        self.insert(exchange, range(total), keys=20)
        relay = self.relay(*args)
        with stops_cleanly(relay):
            assert self.publishing(below=total)
            left_at_fault = self.pending()
            restart()
            self.drained(relay)
        return relay, left_at_fault

    def relays_killed(self, *args: str, kills: int, rng: random.Random, within_s: float) -> int:
        """Starts ``outbox-relay run ARGS`` ``kills`` times, each SIGKILLed at a random
        moment up to ``within_s`` after it began to publish (anywhere in claim, publish,
        confirm or settle: a batch takes a few ms); how many kills hit a relay at work."""
        killed_mid_work = 0
        for _ in range(kills):
            before = self.pending()
            relay = self.relay(*args)
            try:
                if before and self.publishing(below=before, timeout_s=15):
                    killed_mid_work += 1
                time.sleep(rng.uniform(0.0, within_s))
            finally:
                relay.kill()
        return killed_mid_work

    def close(self) -> None:
        for relay in self.relays:
            relay.kill()


@contextlib.contextmanager
def stops_cleanly(*processes: CliProcess) -> Iterator[None]:
    """Runs the block, then stops each process (SIGTERM): each must exit with 0."""
    try:
        yield
    finally:
        codes = [process.stop() for process in processes]
        assert codes == [0] * len(processes), [p.log_text()[-LOG_TAIL_CHARS:] for p in processes]
