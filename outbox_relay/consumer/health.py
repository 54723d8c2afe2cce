"""What the consumer says about itself and its dependencies: liveness for ``/healthz``
(the I/O loop went round recently, and no service has refused the configuration for
``unhealthy_after_s``), and the logs of broker outages and refusals.

Misconfiguration (see :mod:`outbox_relay.misconfiguration`): a refusal after the start is
retried, logged at a bounded rate and fails liveness after ``unhealthy_after_s``.
"""

from __future__ import annotations

import time

import structlog

from outbox_relay.consumer.observer import ConsumerObserver
from outbox_relay.errors import MisconfiguredError
from outbox_relay.misconfiguration import Refusals

LIVENESS_LIMIT_S = 30.0  # an I/O loop quiet for longer is stuck: /healthz fails


class Health:
    """The runner's liveness and dependency state; used from its I/O thread (liveness from
    any thread)."""

    def __init__(
        self,
        *,
        unhealthy_after_s: float,
        observer: ConsumerObserver,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._refusals = Refusals(unhealthy_after_s=unhealthy_after_s)
        self._observer = observer
        self._log = log
        self._outage = False
        self._last_tick = time.monotonic()

    def tick(self) -> None:
        """The I/O loop went round (also while it waits out an outage)."""
        self._last_tick = time.monotonic()

    def liveness(self) -> tuple[bool, str]:
        """Alive: the I/O loop went round recently (also while it waits out an outage),
        unless a service has refused the configuration for ``unhealthy_after_s``."""
        refused = self._refusals.unhealthy()
        if refused is not None:
            return False, refused
        idle_s = time.monotonic() - self._last_tick
        if idle_s <= LIVENESS_LIMIT_S:
            return True, f"I/O loop ran {idle_s:.1f}s ago"
        return False, f"the I/O loop has not run for {idle_s:.0f}s"

    def broker_down(self, error: BaseException | None) -> None:
        """A connection attempt failed, or the connection was lost: logged once an outage."""
        refused = isinstance(error, MisconfiguredError)
        self._observer.dependency("broker", up=False, refused=refused)
        if refused:
            self.refused("broker", str(error))
        if not self._outage:
            self._outage = True
            self._observer.outage()
            if not refused:
                self._log.warning("consumer.broker_unavailable", error=str(error))

    def broker_up(self) -> None:
        """Connected and consuming (again)."""
        self._observer.dependency("broker", up=True, refused=False)
        if self._refusals.accepted("broker"):
            self._log.info("consumer.dependency_accepted", service="broker")
        if self._outage:
            self._outage = False
            self._log.info("consumer.broker_reconnected")
        else:
            self._log.info("consumer.consuming")

    def refused(self, service: str, error: str) -> None:
        """Loud, at a bounded rate: the next try may succeed once someone fixes it."""
        report = self._refusals.refused(service, error)
        if report.log:
            self._log.error(
                "consumer.dependency_refused",
                service=service,
                error=error,
                refused_for_s=round(report.for_s, 1),
                tries=report.tries,
                retrying=True,
            )

    def accepted(self, service: str) -> bool:
        """``service`` answered: whether it had refused the configuration until now."""
        return self._refusals.accepted(service)
