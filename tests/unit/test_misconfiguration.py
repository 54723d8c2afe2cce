"""Which failures no retry fixes (pure decisions), and the loudness that follows them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.misconfiguration import (
    ACCESS_REFUSED,
    NOT_ALLOWED,
    Refusals,
    broker_misconfiguration,
    database_misconfiguration,
)
from tests.support.clock import FakeClock

# What libpq and the server say, verbatim (psycopg 3, PostgreSQL 15); connection
# failures carry no SQLSTATE, only their text.
PERMANENT_DATABASE = [
    (None, 'connection failed: ... FATAL:  role "nosuchrole" does not exist', "role"),
    (None, 'connection failed: ... FATAL:  database "nosuchdb" does not exist', "database"),
    (None, 'FATAL:  password authentication failed for user "relay"', "password"),
    ("28P01", "FATAL:  password authentication failed", "password"),
    ("28000", 'FATAL:  role "x" does not exist', "role"),
    ("28000", 'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "x"', "pg_hba"),
    (None, 'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "x", database "y"', "pg_hba"),
    ("3D000", 'database "nosuchdb" does not exist', "database"),
    ("42P01", 'relation "s.outbox_listener" does not exist', "outbox"),
    ("3F000", 'schema "s" does not exist', "outbox"),
    ("42883", "function s.outbox_wake() does not exist", "outbox"),
    ("42501", "permission denied for table outbox", "privilege"),
    (None, "connection failed: server does not support SSL, but SSL was required", "TLS"),
    (None, "connection failed: SSL error: certificate verify failed", "TLS"),
    (None, 'connection failed: root certificate file "/nope" does not exist', "TLS"),
    (None, "connection failed: SSL error: tlsv1 alert unknown ca", "TLS"),
]

TRANSIENT_DATABASE = [
    (None, "connection failed: ... Connection refused\n\tIs the server running on that host"),
    (None, "connection failed: ... Connection timed out"),
    (None, 'connection failed: could not translate host name "db" to address'),
    (None, "server closed the connection unexpectedly"),
    (None, "consuming input failed: server closed the connection unexpectedly"),
    ("57P01", "terminating connection due to administrator command"),
    ("57P03", "the database system is starting up"),
    ("53300", "sorry, too many clients already"),
    ("08006", "connection failure"),
    ("40001", "could not serialize access"),
    ("25P03", "terminating connection due to idle-in-transaction timeout"),
    # A relation whose name holds "role" is not a missing role.
    (None, 'relation "user_role" is locked'),
]


class TestDatabaseMisconfiguration:
    @pytest.mark.parametrize(("sqlstate", "message", "word"), PERMANENT_DATABASE)
    def test_what_a_retry_cannot_fix_is_named_with_its_fix(
        self, sqlstate: str | None, message: str, word: str
    ) -> None:
        wrong = database_misconfiguration(sqlstate, message)
        assert wrong is not None
        assert word.lower() in (wrong.cause + wrong.fix).lower()
        assert wrong.fix

    @pytest.mark.parametrize(("sqlstate", "message"), TRANSIENT_DATABASE)
    def test_outages_are_retried(self, sqlstate: str | None, message: str) -> None:
        assert database_misconfiguration(sqlstate, message) is None

    @given(st.sampled_from(["08", "53", "57", "40", "55", "58", "XX"]), st.text(max_size=3))
    def test_connection_resource_and_operator_classes_are_transient(
        self, sqlstate_class: str, rest: str
    ) -> None:
        assert database_misconfiguration(sqlstate_class + "000", f"failed {rest}") is None

    def test_the_fix_names_the_option_to_change(self) -> None:
        wrong = database_misconfiguration(None, 'FATAL:  role "x" does not exist')
        assert wrong is not None
        assert "OUTBOX_RELAY_DATABASE_URL" in wrong.fix


class TestBrokerMisconfiguration:
    @pytest.mark.parametrize(
        ("error_type", "code", "text", "word"),
        [
            ("ProbableAuthenticationError", 403, "ACCESS_REFUSED - Login was refused", "login"),
            ("AuthenticationError", None, "PLAIN", "login"),
            (
                "ConnectionClosedByBroker",
                ACCESS_REFUSED,
                "ACCESS_REFUSED - Login was refused",
                "login",
            ),
            ("ProbableAccessDeniedError", NOT_ALLOWED, "NOT_ALLOWED - vhost x not found", "vhost"),
            ("ConnectionClosedByBroker", NOT_ALLOWED, "NOT_ALLOWED - access to vhost", "vhost"),
            ("ProbableAccessDeniedError", None, "", "vhost"),
            (
                "ChannelClosedByBroker",
                ACCESS_REFUSED,
                "ACCESS_REFUSED - read access",
                "permissions",
            ),
        ],
    )
    def test_refusals_are_named_with_their_fix(
        self, error_type: str, code: int | None, text: str, word: str
    ) -> None:
        wrong = broker_misconfiguration(
            error_type=error_type, reply_code=code, reply_text=text, tls_advice=None
        )
        assert wrong is not None
        assert word in (wrong.cause + wrong.fix).lower()

    def test_tls_refused_carries_the_tls_advice(self) -> None:
        wrong = broker_misconfiguration(
            error_type="SSLCertVerificationError",
            reply_code=None,
            reply_text="",
            tls_advice="point ssl_options ca_certs at the CA",
        )
        assert wrong is not None
        assert wrong.fix == "point ssl_options ca_certs at the CA"

    @pytest.mark.parametrize(
        ("error_type", "code", "text"),
        [
            ("ConnectionRefusedError", None, ""),
            ("AMQPConnectorSocketConnectError", None, "Connection refused"),
            ("StreamLostError", None, "Transport indicated EOF"),
            ("ConnectionResetError", None, ""),
            ("gaierror", None, "Name or service not known"),
            ("AMQPHeartbeatTimeout", None, ""),
            (
                "ConnectionClosedByBroker",
                320,
                "CONNECTION_FORCED - broker forced connection closure",
            ),
            ("ConnectionClosedByBroker", 541, "INTERNAL_ERROR"),
            ("ChannelClosedByBroker", 404, "NOT_FOUND - no exchange"),
            ("ChannelClosedByBroker", 406, "PRECONDITION_FAILED"),
            ("TimeoutError", None, "timed out"),
        ],
    )
    def test_outages_are_retried(self, error_type: str, code: int | None, text: str) -> None:
        assert (
            broker_misconfiguration(
                error_type=error_type, reply_code=code, reply_text=text, tls_advice=None
            )
            is None
        )


class TestRefusals:
    def test_healthy_until_a_service_has_refused_for_the_limit(self) -> None:
        clock = FakeClock()
        refusals = Refusals(unhealthy_after_s=300, clock=clock)
        assert refusals.unhealthy() is None
        refusals.refused("broker", "login refused")
        clock.now += 299
        refusals.refused("broker", "login refused")
        assert refusals.unhealthy() is None
        clock.now += 1
        assert refusals.unhealthy() == "the broker has refused for 300s: login refused"

    def test_an_accepted_connection_ends_the_refusal(self) -> None:
        clock = FakeClock()
        refusals = Refusals(unhealthy_after_s=10, clock=clock)
        refusals.refused("database", "role gone")
        clock.now += 20
        assert refusals.accepted("database") is True
        assert refusals.unhealthy() is None
        assert refusals.accepted("database") is False
        refusals.refused("database", "role gone")
        clock.now += 5
        assert refusals.unhealthy() is None  # a new refusal starts a new count

    def test_logged_once_per_interval_with_the_tries_between(self) -> None:
        clock = FakeClock()
        refusals = Refusals(log_interval_s=60, clock=clock)
        reports = []
        for _ in range(100):  # a try every 2 s for 200 s
            reports.append(refusals.refused("broker", "x"))
            clock.now += 2
        logged = [r for r in reports if r.log]
        assert len(logged) == 4  # at 0, 60, 120 and 180 s
        assert [r.tries for r in logged] == [1, 30, 30, 30]
        assert [round(r.for_s) for r in logged] == [0, 60, 120, 180]

    def test_services_are_counted_apart(self) -> None:
        clock = FakeClock()
        refusals = Refusals(unhealthy_after_s=10, clock=clock)
        refusals.refused("database", "a")
        clock.now += 5
        refusals.refused("broker", "b")
        assert refusals.refusing("broker")
        clock.now += 5
        assert refusals.unhealthy() == "the database has refused for 10s: a"
        refusals.accepted("database")
        assert refusals.unhealthy() is None
        clock.now += 5
        assert refusals.unhealthy() == "the broker has refused for 10s: b"
