"""Settling a claim: the rows the broker confirmed are deleted and each failed row gets
its retry time or is dead (:mod:`outbox_relay.relay.backoff`), in one transaction; the
failures are logged once per cause an interval, and the observer is told."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

import structlog

from outbox_relay.log_summary import RepeatedEvents
from outbox_relay.message import OutboxRow
from outbox_relay.relay.backoff import retry_delay_s
from outbox_relay.relay.outcome import Failure, Outcome, Reason, Status
from outbox_relay.relay.ports import BatchResult, Claim, RelayObserver
from outbox_relay.relay.settings import RelaySettings

log = structlog.get_logger("outbox_relay.relay")


class Settler:
    """Settles claims for the pipeline (see :meth:`settle`)."""

    def __init__(
        self,
        *,
        settings: RelaySettings,
        observer: RelayObserver,
        random_unit: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._observer = observer
        self._random_unit = random_unit
        # Per-row failures, logged once per reason and exchange per interval.
        self._row_events = RepeatedEvents()

    def log_repeated(self) -> None:
        """Log the per-row failures counted since their interval began."""
        for event, fields in self._row_events.due():
            log.warning(event, **fields)

    def settle(self, claim: Claim, outcomes: Mapping[int, Outcome]) -> BatchResult:
        """End the claim: delete the confirmed rows, and record each failure (its retry
        time, or dead); rows UNSENT or without an outcome stay as they were. The totals."""
        rows = claim.rows
        published: list[OutboxRow] = []
        failures: list[Failure] = []
        for row in rows:
            outcome = outcomes.get(row.id)
            if outcome is None or outcome.status is Status.UNSENT:
                continue
            if outcome.status is Status.CONFIRMED:
                published.append(row)
                continue
            failures.append(self._failure(row, outcome.error or "unknown error", outcome.reason))
        claim.settle([row.id for row in published], failures)
        self._observer.batch_settled(
            claimed=len(rows),
            published=published,
            failures=failures,
            now=dt.datetime.now(tz=dt.timezone.utc),
        )
        # Rows left over by the byte budget count as held: the loop claims again at once.
        held = len(rows) + claim.left_over - len(published) - len(failures)
        if failures:
            exchanges = {row.id: row.exchange for row in rows}
            for failure in failures:
                # One line per cause, exchange and error text an interval: rows refused
                # alike (a missing exchange, no binding) are counted; each row refused for
                # its own data (its error names what) is still logged.
                lines = self._row_events.record(
                    "relay.row_dead" if failure.dead else "relay.row_failed",
                    (failure.reason.value, exchanges[failure.row_id], failure.error),
                    row_id=failure.row_id,
                    error=failure.error,
                    retry_in_s=None if failure.dead else round(failure.retry_in_s, 3),
                )
                for event, fields in lines:
                    log.warning(event, **fields)
        log.debug(
            "relay.batch_published", published=len(published), failed=len(failures), held=held
        )
        return BatchResult(len(rows) + claim.left_over, len(published), len(failures), held)

    def _failure(self, row: OutboxRow, error: str, reason: Reason | None) -> Failure:
        # attempts written with SQL may be anything the column holds: below zero counts
        # as none, and at the integer maximum the store saturates it.
        attempt = max(row.attempts, 0) + 1
        dead = attempt >= self._settings.max_attempts or (reason is not None and reason.permanent)
        delay = retry_delay_s(
            attempt,
            base_s=self._settings.retry_base_s,
            max_s=self._settings.retry_max_s,
            jitter=self._random_unit(),
        )
        return Failure(
            row_id=row.id,
            error=error,
            retry_in_s=0.0 if dead else delay,
            dead=dead,
            reason=reason or Reason.CHANNEL_CLOSED,
        )
