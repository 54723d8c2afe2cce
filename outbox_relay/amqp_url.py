"""Connection parameters from an ``amqp://`` or ``amqps://`` URL, with errors that help.

TLS is configured in the URL, as pika reads it: ``amqps://`` verifies the broker's
certificate against the system CAs and its host name against the URL's host; the
``ssl_options`` query parameter (a dict literal) names a CA file, a client certificate
and key, or another server name. See README ("TLS").
"""

from __future__ import annotations

import pika

from outbox_relay.errors import ConfigurationError
from outbox_relay.urls import redact_url, scrub


def url_parameters(url: str) -> pika.URLParameters:
    """pika's parameters for ``url``; raises ConfigurationError naming what is wrong
    (never the password)."""
    try:
        return pika.URLParameters(url)
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
