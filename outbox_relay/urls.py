"""URL helpers that are safe to log."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# key=value connection strings: a quoted value, or everything up to the next "key=" (an
# unquoted password with a space is malformed, but its second half is still a secret).
_PASSWORD_IN_DSN = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|.*?(?=\s+\w+\s*=|\s*$))", re.IGNORECASE
)
_PASSWORD_IN_QUERY = re.compile(r"((?:^|&)password=)([^&]*)", re.IGNORECASE)
_SSL_OPTIONS_IN_QUERY = re.compile(r"((?:^|&)ssl_options=)([^&]*)", re.IGNORECASE)
_SHORTEST_SCRUBBED = 3  # shorter fragments would blank out unrelated words


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``; keeps user, host, port and path."""
    if "://" not in url:
        return _PASSWORD_IN_DSN.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return "<unparseable url>"
    query = _redact_query(parts.query)
    if password is None:
        return urlunsplit(parts._replace(query=query))
    userinfo = f"{parts.username or ''}:***"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_query(query: str) -> str:
    query = _PASSWORD_IN_QUERY.sub(r"\1***", query)
    # pika's ssl_options is a dict literal; it may hold the client key's password.
    return _SSL_OPTIONS_IN_QUERY.sub(
        lambda m: m.group(1) + ("***" if "password" in unquote(m.group(2)).lower() else m.group(2)),
        query,
    )


def scrub(text: str, url: str) -> str:
    """``text`` (an error from a driver that saw ``url``) without the URL's password.

    Drivers quote pieces of a connection string they cannot parse; this removes the
    password and each of its words wherever they appear.
    """
    for secret in sorted(_secrets_in(url), key=len, reverse=True):
        if len(secret) >= _SHORTEST_SCRUBBED:
            text = text.replace(secret, "***")
    return text


def _secrets_in(url: str) -> set[str]:
    found: set[str] = set()
    values: list[str] = []
    if "://" in url:
        try:
            parts = urlsplit(url)
            if parts.password:
                values.append(parts.password)
            query = parts.query
        except ValueError:
            _, _, rest = url.partition("://")
            userinfo = rest.rpartition("@")[0]
            values.append(userinfo.partition(":")[2])
            query = rest.partition("?")[2]
        values += [m.group(2) for m in _PASSWORD_IN_QUERY.finditer(query)]
    else:
        values += [m.group(2).strip("'") for m in _PASSWORD_IN_DSN.finditer(url)]
    for value in values:
        for candidate in (value, unquote(value)):
            found.add(candidate)
            found.update(candidate.split())
    return {secret for secret in found if secret}
