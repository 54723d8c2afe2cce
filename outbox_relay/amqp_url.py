"""Connection parameters from an ``amqp://`` or ``amqps://`` URL, with errors that help.

TLS is configured in the URL, as pika reads it: ``amqps://`` verifies the broker's
certificate against the system CAs and its host name against the URL's host; the
``ssl_options`` query parameter (a dict literal) names a CA file, a client certificate
and key, or another server name. See docs/security.md ("TLS to RabbitMQ").

Heartbeats: unless the URL sets ``heartbeat``, AMQP_HEARTBEAT_S is negotiated (RabbitMQ
proposes 60 s). The broker then sends something at least every half of it, and pika
declares a connection that brought nothing for two of its checks (every heartbeat + 5 s)
dead: a broker connection that goes silent is found within 15 to 30 s, not 65 to 130 s.
"""

from __future__ import annotations

import ssl

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from outbox_relay.dead_peer import DeadPeerTimings
from outbox_relay.errors import (
    BrokerMisconfiguredError,
    BrokerUnavailableError,
    ConfigurationError,
)
from outbox_relay.misconfiguration import Misconfiguration, broker_misconfiguration
from outbox_relay.urls import redact_url, scrub, url_problem

AMQP_HEARTBEAT_S = 10
# What opening a BlockingConnection raises: besides AMQPError, a handshake that gets no
# answer (a silent network) raises AMQPConnectorStackTimeout, which is no AMQPError.
CONNECT_ERRORS = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)


def url_parameters(url: str, *, dead_peer_timeout_s: float = 0.0) -> pika.URLParameters:
    """pika's parameters for ``url``, with TCP keepalives and TCP_USER_TIMEOUT for the
    dead-peer timeout unless the URL sets its own ``tcp_options``, and a heartbeat of
    AMQP_HEARTBEAT_S unless it sets ``heartbeat``; raises
    ConfigurationError naming what is wrong (never the password)."""
    problem = url_problem(url)
    if problem:
        # Before pika reads it: pika would split a malformed URL in the middle of the
        # password and quote a piece of it as the host or port.
        raise ConfigurationError(f"AMQP URL {redact_url(url)}: {problem}")
    try:
        params = pika.URLParameters(url)
    except OSError as exc:  # ssl_options names a file that cannot be loaded
        reason = exc.strerror or str(exc)
        raise ConfigurationError(
            f"AMQP URL {redact_url(url)}: cannot load the TLS files its ssl_options names "
            f"(ca_certs, certfile, keyfile): {reason}"
        ) from None
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ConfigurationError(
            f"AMQP URL {redact_url(url)}: {scrub(str(exc), url)}; expected "
            "amqp[s]://user:password@host:port/vhost[?heartbeat=30&ssl_options={...}]"
        ) from None
    timings = DeadPeerTimings.for_timeout(dead_peer_timeout_s)
    if timings is not None and params.tcp_options is None:
        params.tcp_options = timings.pika_tcp_options()
    if params.heartbeat is None:  # None: take the broker's proposal
        params.heartbeat = AMQP_HEARTBEAT_S
    return params


def describe_amqp_error(error: BaseException | None) -> str:
    """What went wrong connecting to (or talking with) the broker, in words a person can
    act on: the innermost cause pika wrapped, plus what to change when TLS refused."""
    if error is None:
        return "unknown reason"
    error = _innermost(error)
    code = getattr(error, "reply_code", None)
    if code is not None:
        return f"{code} {getattr(error, 'reply_text', None)}"
    text = str(error) or type(error).__name__
    advice = _tls_advice(error, text)
    return f"{text}; {advice}" if advice else text


def broker_refusal(error: BaseException | None) -> Misconfiguration | None:
    """What is wrong when ``error`` (what pika raised) is one no retry fixes: a refused
    login, an unknown vhost, refused permissions, TLS refused; None otherwise."""
    if error is None:
        return None
    inner = _innermost(error)
    code = getattr(inner, "reply_code", None)
    text = str(inner) or type(inner).__name__
    return broker_misconfiguration(
        error_type=type(inner).__name__,
        reply_code=code if isinstance(code, int) else None,
        reply_text=str(getattr(inner, "reply_text", "") or ""),
        tls_advice=_tls_advice(inner, text),
    )


def unavailable(message: str, error: BaseException | None) -> BrokerUnavailableError:
    """``message`` (which names the redacted URL and pika's reason) as the error to
    raise: BrokerMisconfiguredError, with the fix, when no retry helps."""
    wrong = broker_refusal(error)
    if wrong is None:
        return BrokerUnavailableError(message)
    return BrokerMisconfiguredError(f"{message}; {wrong.cause}: {wrong.fix}")


def _tls_advice(error: BaseException, text: str) -> str | None:
    if isinstance(error, ssl.SSLCertVerificationError):
        if "mismatch" in (error.verify_message or ""):
            return (
                "the broker's certificate does not name the URL's host: connect by a name "
                "the certificate lists, or set server_hostname in ssl_options"
            )
        return (
            "the broker's certificate is not trusted: point ssl_options ca_certs at the CA "
            "file that signed it"
        )
    upper = text.upper()
    if "CERTIFICATE_REQUIRED" in upper:
        return "the broker requires a client certificate: set certfile and keyfile in ssl_options"
    if "EOF OCCURRED IN VIOLATION OF PROTOCOL" in upper:
        # TLS 1.3: a broker that refuses the client's certificate (or its absence) may
        # close before the client has read its alert.
        return (
            "the broker ended the TLS session abruptly; when connecting, that is usually "
            "a missing or untrusted client certificate: set certfile and keyfile in "
            "ssl_options to one signed by a CA the broker trusts"
        )
    if "UNKNOWN_CA" in upper or "BAD_CERTIFICATE" in upper:
        return (
            "the broker refused the client certificate: use one signed by a CA the "
            "broker trusts (its cacertfile)"
        )
    return None


def _innermost(error: BaseException) -> BaseException:
    """pika wraps what went wrong (refused, TLS verification, a handshake) in connection
    workflow errors whose own text is empty or generic: find the cause a person can act on."""
    while True:
        exceptions = getattr(error, "exceptions", None)  # AMQPConnectionWorkflowFailed
        wrapped = getattr(error, "exception", None)  # AMQPConnector*Error
        if exceptions:
            candidate = exceptions[-1]
        elif wrapped is not None:
            candidate = wrapped
        elif error.args:  # AMQPConnectionError(<workflow error>)
            candidate = error.args[0]
        else:
            return error
        if not isinstance(candidate, BaseException):
            return error
        error = candidate
