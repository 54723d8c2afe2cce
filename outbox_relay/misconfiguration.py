"""Which failures no retry can fix, and how loud to be about them.

A refused login, a database, role or vhost that does not exist, a TLS set-up the other
side rejects, a missing outbox table: retrying does not help until a person changes
something. At start the CLI stops at once with one line (exit code 3, see ``cli``); once
running (a password rotated under a live process) the relay and the consumer go on
retrying, since the fix may come without a restart, but loudly: an error log at a
bounded rate, a metric, and ``/healthz`` failing after a while (:class:`Refusals`).

Everything else (refused or reset connections, timeouts, DNS failures, a server
starting up or shutting down, too many connections) is transient and retried quietly.

The decisions here are pure: the adapters pass in what they read from psycopg's and
pika's errors (:mod:`outbox_relay.store.connect`, :mod:`outbox_relay.amqp_url`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

# /healthz fails once a service has refused the configuration for this long.
UNHEALTHY_AFTER_S = 300.0
# While a service keeps refusing, the error is logged again at most this often.
REFUSAL_LOG_INTERVAL_S = 60.0

_DATABASE_URL = "--database-url (OUTBOX_RELAY_DATABASE_URL)"
_AMQP_URL = "--amqp-url (OUTBOX_RELAY_AMQP_URL)"


@dataclass(frozen=True)
class Misconfiguration:
    """A failure no retry fixes: ``cause`` says what is wrong, ``fix`` what to change."""

    cause: str
    fix: str


def database_misconfiguration(sqlstate: str | None, message: str) -> Misconfiguration | None:
    """What is wrong when PostgreSQL fails with ``sqlstate`` and ``message``, or None when
    a retry may succeed. libpq reports failures to connect without a SQLSTATE (only
    their text), so both are read; the first rule that matches names it."""
    text = message.lower()
    for sqlstates, pattern, wrong in _DATABASE_RULES:
        if sqlstate in sqlstates or (pattern is not None and pattern.search(text)):
            return wrong
    return None


_DATABASE_RULES: tuple[tuple[frozenset[str | None], re.Pattern[str] | None, Misconfiguration], ...]
_DATABASE_RULES = (
    (
        frozenset({"28P01"}),
        re.compile("password authentication failed"),
        Misconfiguration(
            "the password was refused",
            f"set the right user and password in {_DATABASE_URL}",
        ),
    ),
    (
        frozenset(),
        re.compile(r'\brole ".*" does not exist'),
        Misconfiguration(
            "the role does not exist",
            f"create the role (CREATE ROLE ... LOGIN) or name an existing user in {_DATABASE_URL}",
        ),
    ),
    (
        frozenset({"3D000"}),
        re.compile(r'\bdatabase ".*" does not exist'),
        Misconfiguration(
            "the database does not exist",
            f"create it (createdb) or name an existing database in {_DATABASE_URL}",
        ),
    ),
    (
        frozenset({"28000"}),
        re.compile("no pg_hba.conf entry"),
        Misconfiguration(
            "the server refused this user from this host (pg_hba.conf)",
            "add a pg_hba.conf entry for this user, database and address, or connect as "
            f"another user in {_DATABASE_URL}",
        ),
    ),
    (
        frozenset({"42P01", "3F000", "42883"}),
        None,
        Misconfiguration(
            "the outbox's tables or functions are missing in this schema",
            "run `outbox-relay migrate --schema S` (or apply `outbox-relay sql`), or pass "
            "the schema that holds them with --schema",
        ),
    ),
    (
        frozenset({"42501"}),
        None,
        Misconfiguration(
            "the role lacks a privilege it needs",
            "grant what `outbox-relay sql --grants KIND=ROLE` prints for this role",
        ),
    ),
    (
        frozenset(),
        re.compile(
            "certificate verify failed|server does not support ssl|ssl was required"
            "|certificate file|private key file|sslmode value|server certificate for"
            "|tlsv1 alert|sslv3 alert"
        ),
        Misconfiguration(
            "TLS failed",
            "check sslmode, sslrootcert, sslcert and sslkey in "
            f"{_DATABASE_URL} against the server's TLS set-up",
        ),
    ),
)


# pika's names for a refused login (the broker closes the socket during the handshake)
# and for a refused vhost (it closes it after connection.open).
_AUTHENTICATION_ERRORS = frozenset({"ProbableAuthenticationError", "AuthenticationError"})
_ACCESS_DENIED_ERRORS = frozenset({"ProbableAccessDeniedError"})
ACCESS_REFUSED = 403
NOT_ALLOWED = 530


def broker_misconfiguration(
    *, error_type: str, reply_code: int | None, reply_text: str, tls_advice: str | None
) -> Misconfiguration | None:
    """What is wrong when connecting to (or consuming from) RabbitMQ failed with an
    error of type ``error_type`` (pika's innermost one), the broker's reply code and
    text if it sent one, and the TLS advice :mod:`outbox_relay.amqp_url` found for it;
    None when a retry may succeed."""
    text = reply_text.lower()
    if error_type in _AUTHENTICATION_ERRORS or (
        reply_code == ACCESS_REFUSED and "login was refused" in text
    ):
        return Misconfiguration(
            "the broker refused the login",
            f"set the right user and password in {_AMQP_URL}, or create the user "
            "(rabbitmqctl add_user)",
        )
    if reply_code == NOT_ALLOWED or error_type in _ACCESS_DENIED_ERRORS:
        return Misconfiguration(
            "the vhost does not exist or this user may not use it",
            f"name an existing vhost in {_AMQP_URL} ('/' is written %2F), or grant the "
            "user access: rabbitmqctl set_permissions -p VHOST USER '.*' '.*' '.*'",
        )
    if reply_code == ACCESS_REFUSED:
        return Misconfiguration(
            "the broker refused this user access",
            "grant the user the configure, write and read permissions it needs "
            "(rabbitmqctl set_permissions)",
        )
    if tls_advice is not None:
        return Misconfiguration("TLS failed", tls_advice)
    return None


@dataclass(frozen=True)
class RefusalReport:
    """What to tell about a refusal now: ``log`` it (the first, then at most every
    REFUSAL_LOG_INTERVAL_S), with how many ``tries`` failed since the last line and how
    long the service has refused (``for_s``)."""

    log: bool
    tries: int
    for_s: float


class Refusals:
    """Tracks, per service, since when it has refused the configuration.

    :meth:`refused` is called on each failed try, :meth:`accepted` once a connection
    succeeds. ``unhealthy_after_s`` after the first refusal without an acceptance,
    :meth:`unhealthy` says why the process is unhealthy. ``clock``: monotonic seconds.
    """

    def __init__(
        self,
        *,
        unhealthy_after_s: float = UNHEALTHY_AFTER_S,
        log_interval_s: float = REFUSAL_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._unhealthy_after_s = unhealthy_after_s
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._since: dict[str, float] = {}
        self._logged_at: dict[str, float] = {}
        self._tries: dict[str, int] = {}
        self._reason: dict[str, str] = {}

    def refused(self, service: str, reason: str) -> RefusalReport:
        now = self._clock()
        since = self._since.setdefault(service, now)
        self._reason[service] = reason
        tries = self._tries.get(service, 0) + 1
        logged_at = self._logged_at.get(service)
        if logged_at is not None and now - logged_at < self._log_interval_s:
            self._tries[service] = tries
            return RefusalReport(log=False, tries=tries, for_s=now - since)
        self._logged_at[service] = now
        self._tries[service] = 0
        return RefusalReport(log=True, tries=tries, for_s=now - since)

    def accepted(self, service: str) -> bool:
        """The service accepted a connection; True when it had been refusing."""
        self._logged_at.pop(service, None)
        self._tries.pop(service, None)
        self._reason.pop(service, None)
        return self._since.pop(service, None) is not None

    def refusing(self, service: str) -> bool:
        return service in self._since

    def unhealthy(self) -> str | None:
        """Why the process is unhealthy (a service refused for too long), or None."""
        now = self._clock()
        for service, since in sorted(self._since.items()):
            lasted = now - since
            if lasted >= self._unhealthy_after_s:
                return f"the {service} has refused for {lasted:.0f}s: {self._reason[service]}"
        return None
