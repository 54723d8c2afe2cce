"""Broker connection errors described so a person knows what to change."""

from __future__ import annotations

import ssl

import pika.exceptions
import pytest
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed

from outbox_relay.amqp_url import describe_amqp_error


def verify_failed(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_message = message
    return error


def wrapped(error: BaseException) -> BaseException:
    """As pika reports a failed connection attempt: the cause two layers down."""
    return pika.exceptions.AMQPConnectionError(AMQPConnectionWorkflowFailed([error]))


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (verify_failed("self-signed certificate in certificate chain"), "ca_certs"),
        (verify_failed("Hostname mismatch, certificate is not valid for 'x'."), "server_hostname"),
        (
            pika.exceptions.StreamLostError(
                "Stream connection lost: SSLError(1, '[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]')"
            ),
            "the broker requires a client certificate: set certfile and keyfile",
        ),
        (
            pika.exceptions.StreamLostError(
                "Stream connection lost: SSLError(1, '[SSL: TLSV1_ALERT_UNKNOWN_CA]')"
            ),
            "the broker refused the client certificate",
        ),
    ],
)
def test_tls_failures_say_what_to_change(error: BaseException, advice: str) -> None:
    text = describe_amqp_error(wrapped(error))
    assert text.startswith(str(error))
    assert advice in text


def test_other_errors_are_described_as_they_are() -> None:
    assert (
        describe_amqp_error(wrapped(ConnectionRefusedError(111, "refused")))
        == "[Errno 111] refused"
    )
    closed = pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED")
    assert describe_amqp_error(closed) == "320 CONNECTION_FORCED"
    assert describe_amqp_error(None) == "unknown reason"
