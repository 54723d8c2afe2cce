"""The RabbitMQ nodes an ``--amqp-url`` names: one URL, or a list of them.

A cluster is reached through any of its nodes, so every command that takes an AMQP URL
takes a list. Three spellings, which may be combined:

- the option repeated (``--amqp-url amqp://h1 --amqp-url amqp://h2``), which the CLI
  joins with commas;
- full URLs separated by commas (``amqp://u:p@h1/v,amqp://u:p@h2/v``), the form the
  ``OUTBOX_RELAY_AMQP_URL`` variable takes (whitespace between them is allowed too);
- kombu's several hosts in one URL (``amqp://u:p@h1:5672,h2:5672/v?heartbeat=30``): the
  user, password, vhost and query apply to every host.

Every node must name the same vhost (the relay's topology and the consumer's queues live
in one vhost; nodes of one cluster share it): a list that mixes vhosts is refused.
Credentials and query parameters may differ from node to node (a ``server_hostname`` per
node for TLS). The same node twice is refused, as is an empty element (``a,,b``).

Pure: no I/O, no pika. :mod:`outbox_relay.broker_nodes` opens connections to them.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from outbox_relay.urls import redact_url

_SCHEMES = ("amqp://", "amqps://")
# A comma that starts another URL; commas inside a URL (kombu hosts, ssl_options) stay.
_URL_START = re.compile(r"(?:\s*,\s*|\s+)(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


class NodeListError(ValueError):
    """An ``--amqp-url`` list that cannot be used; the text names the fix."""


def split_urls(text: str) -> tuple[str, ...]:
    """The node URLs in ``text``, one per node, in the order given.

    Raises NodeListError for an empty list, an empty element, a URL without the amqp://
    or amqps:// scheme, nodes in different vhosts, or the same node twice."""
    stripped = text.strip()
    if not stripped:
        raise NodeListError("no RabbitMQ URL was given: give amqp://user:password@host:port/vhost")
    urls: list[str] = []
    for chunk in _URL_START.split(stripped):
        urls.extend(_expand(chunk.strip()))
    _same_vhost(urls)
    _distinct(urls)
    return tuple(urls)


def _expand(url: str) -> list[str]:
    """kombu's ``scheme://userinfo@h1:p1,h2:p2/path?query`` as one URL per host."""
    if not url or url.startswith(",") or url.endswith(","):
        raise NodeListError(
            "the list of RabbitMQ URLs has an empty element (two commas in a row, or a comma "
            "at an end): remove it"
        )
    if not url.lower().startswith(_SCHEMES):
        raise NodeListError(
            f"{redact_url(url)!r} is not an AMQP URL: each element of the list must start "
            "with amqp:// or amqps:// (separate whole URLs with commas, or list hosts as "
            "amqp://user:password@host1:5672,host2:5672/vhost)"
        )
    scheme, _, rest = url.partition("://")
    cut = _netloc_end(rest)
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    prefix = f"{scheme}://{userinfo}{at}"
    expanded: list[str] = []
    for host in hosts.split(","):
        if not host.strip():
            raise NodeListError(
                f"{redact_url(url)!r} lists an empty host (two commas in a row, or a comma "
                "at an end): remove it"
            )
        expanded.append(prefix + host.strip() + tail)
    return expanded


def _netloc_end(rest: str) -> int:
    """Where the network location ends: the first '/', '?' or '#' after the last '@'
    before it (a password may hold none of them unencoded; urls.url_problem says so)."""
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(ends, default=len(rest))


def vhost_of(url: str) -> str:
    """The vhost ``url`` names (its path, percent-decoded; ``/`` when it has none)."""
    rest = url.partition("://")[2]
    cut = _netloc_end(rest)
    path = rest[cut:].partition("?")[0].partition("#")[0]
    if not path or path == "/":
        return "/"
    return unquote(path[1:])


def node_of(url: str) -> str:
    """``host:port`` of ``url`` (the default port of its scheme when it names none): how
    logs, the status and the metric label name the node; never a credential."""
    scheme, _, rest = url.partition("://")
    host = rest[: _netloc_end(rest)].rpartition("@")[2]
    if host.startswith("["):  # IPv6 literal
        address, _, after = host[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
        return f"[{address}]:{port or DEFAULT_PORTS.get(scheme.lower(), 5672)}"
    name, _, port = host.partition(":")
    return f"{name or 'localhost'}:{port or DEFAULT_PORTS.get(scheme.lower(), 5672)}"


def _same_vhost(urls: list[str]) -> None:
    vhosts = {vhost_of(url) for url in urls}
    if len(vhosts) > 1:
        named = ", ".join(sorted(repr(v) for v in vhosts))
        raise NodeListError(
            f"the RabbitMQ URLs name different vhosts ({named}): the nodes of a list must "
            "all serve the same vhost; give the same path to every URL"
        )


def _distinct(urls: list[str]) -> None:
    seen: set[str] = set()
    for url in urls:
        node = node_of(url).lower()
        if node in seen:
            raise NodeListError(f"the RabbitMQ node {node} is listed twice: list each node once")
        seen.add(node)
