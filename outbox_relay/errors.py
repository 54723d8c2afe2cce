"""The exceptions outbox-relay raises, under one root.

Adapters translate library errors at their edge: psycopg's become :class:`StoreError`,
pika's become :class:`BrokerError`. Code above the adapters never sees either library.
"""

from __future__ import annotations


class OutboxRelayError(Exception):
    """Root of every error raised by outbox-relay."""


class InvalidMessageError(OutboxRelayError, ValueError):
    """Raised by ``publish`` when an argument cannot become a message.

    Nothing has been written when it is raised; the caller's transaction is untouched.
    """


class ConfigurationError(OutboxRelayError, ValueError):
    """Raised before anything connects when settings contradict each other or are invalid."""


class StoreError(OutboxRelayError):
    """Raised when a database operation fails; the transaction in progress was rolled back."""


class StoreUnavailableError(StoreError):
    """Raised when the database cannot be reached or the connection was lost.

    The relay retries these with backoff; no row changes state until it reconnects.
    """


class MisconfiguredError(OutboxRelayError):
    """A service refused the configuration in a way no retry fixes (see
    :mod:`outbox_relay.misconfiguration`): a refused login, a database, role or vhost
    that does not exist, TLS refused, the outbox's tables missing. Its text names the
    (redacted) URL, the cause and the fix.

    At start the commands stop with exit code 3. A running relay or consumer retries it
    (it is also a ``*UnavailableError``) and reports it loudly: an error log at a bounded
    rate, ``outbox_relay_dependency_refused`` and, after ``--unhealthy-after``, /healthz.
    """


class NoAnswerError(StoreUnavailableError):
    """Raised when PostgreSQL did not answer one round trip within ``--db-timeout``: the
    connection went silent, was closed, and is replaced on the next use."""


class InboxBusyError(StoreError):
    """Raised when another delivery of the same message holds its inbox row (its handler
    still runs) for longer than the inbox insert may wait, a fraction of ``--db-timeout``:
    this delivery goes back to the queue unhandled, no attempt is counted, and nothing
    pauses. The next delivery finds the other one committed (a duplicate) or rolled back."""


class StoreMisconfiguredError(StoreUnavailableError, MisconfiguredError):
    """PostgreSQL refused the configuration; see :class:`MisconfiguredError`."""


class SchemaNotMigratedError(StoreMisconfiguredError):
    """Raised when a table, function or the schema the statement needs does not exist:
    ``outbox-relay migrate`` has not run for that schema (or the URL names another database)."""


class BrokerError(OutboxRelayError):
    """Raised when the broker refuses an operation in a way that is not a per-message outcome."""


class BrokerUnavailableError(BrokerError):
    """Raised when the broker cannot be reached, the connection was lost or stopped answering.

    Messages whose confirms were outstanding are treated as unpublished and sent again
    later with the same message id (at-least-once).
    """


class BrokerMisconfiguredError(BrokerUnavailableError, MisconfiguredError):
    """RabbitMQ refused the configuration; see :class:`MisconfiguredError`."""


class TopologyError(OutboxRelayError):
    """Raised when a topology file is invalid or the broker's objects conflict with it."""


class PublishInterruptedError(BrokerUnavailableError):
    """The connection was lost or stalled, or the partition lease ran out, in the middle of
    a batch. The outcomes the broker gave before that come as data, beside it (see
    :class:`outbox_relay.relay.ports.SendResult`), so those rows can still be settled;
    every other row of the batch stays unpublished. The relay raises it once they are."""
