"""URL helpers that are safe to log, whatever shape the URL has.

A password may hold any character, and people paste them into URLs unencoded: an ``@``,
``/``, ``?`` or ``#`` in it makes the URL malformed, and each parser (urllib, libpq,
pika) then splits it in its own place. So :func:`redact_url` takes everything between the
scheme and the *last* ``@`` as the user information, and :func:`scrub` removes from a
driver's error text every run of characters taken from any way of reading the password.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# key=value connection strings: a quoted value, or everything up to the next "key=" (an
# unquoted password with a space is malformed, but its second half is still a secret).
_PASSWORD_IN_DSN = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|.*?(?=\s+\w+\s*=|\s*$))", re.IGNORECASE
)
_PASSWORD_IN_QUERY = re.compile(r"((?:^|&)password=)([^&#]*)", re.IGNORECASE)
_SSL_OPTIONS_IN_QUERY = re.compile(r"((?:^|&)ssl_options=)([^&#]*)", re.IGNORECASE)
# A comma (or whitespace) that starts another URL of a list (several broker nodes).
_NEXT_URL = re.compile(r"(?:,\s*|\s+)(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
_SHORTEST_SCRUBBED = 3  # shorter words would blank out unrelated words
_SHORTEST_RUN = 4  # a run of characters copied from a password, however a parser cut it
UNPARSEABLE = "<unparseable url>"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``; keeps user, host, port and path.
    A list of URLs (separated by commas, as several broker nodes are given) is redacted
    URL by URL; several hosts in one URL (libpq's and kombu's ``h1:p1,h2:p2``) are kept."""
    urls = _NEXT_URL.split(url.strip())
    if len(urls) > 1:
        return ",".join(redact_url(one) for one in urls)
    if "://" not in url:
        return _PASSWORD_IN_DSN.sub(r"\1***", url)
    scheme, _, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if at and _cut(rest) < len(userinfo):
        # An '@' after the host: the password holds '/', '?' or '#' unencoded.
        if ":" not in userinfo:
            return UNPARSEABLE
        plain = redact_url(f"{scheme}://{after}")
        if plain == UNPARSEABLE:
            return plain
        user = userinfo.partition(":")[0]
        return plain.replace("://", f"://{user}:***@", 1)
    return _redact_wellformed(url)


def _cut(rest: str) -> int:
    """Where the network location ends: at the first '/', '?' or '#'."""
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(ends, default=len(rest))


def _redact_wellformed(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc = rest[: _cut(rest)]
    if "," in netloc.rpartition("@")[2]:  # several hosts: urlsplit cannot read the port
        userinfo, at, hosts = netloc.rpartition("@")
        if at and ":" in userinfo:
            userinfo = userinfo.partition(":")[0] + ":***"
        path, mark, query = rest[len(netloc) :].partition("?")
        query, hash_mark, fragment = query.partition("#")
        redacted = _redact_query(query) if mark else ""
        return f"{scheme}://{userinfo}{at}{hosts}{path}{mark}{redacted}{hash_mark}{fragment}"
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return UNPARSEABLE
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

    Drivers quote pieces of a connection string they cannot parse, cut wherever their
    parser cut it: this removes the password's words (3 characters or more) and every
    run of 4 or more characters copied from the password, raw, percent-decoded or
    backslash-escaped, wherever they appear.
    """
    secrets = _secrets_in(url)
    if not secrets:
        return text
    for word in sorted(_words(secrets), key=len, reverse=True):
        text = text.replace(word, "***")
    return _blank_runs(text, secrets)


def _secrets_in(url: str) -> set[str]:
    """Every string that may be the password, by any parser's reading of ``url``."""
    values: list[str] = []
    if "://" in url:
        rest = url.partition("://")[2]
        for at in (i for i, c in enumerate(rest) if c == "@"):
            userinfo = rest[:at]
            if ":" in userinfo:
                values.append(userinfo.partition(":")[2])
        values += [m.group(2) for m in _PASSWORD_IN_QUERY.finditer(rest.partition("?")[2])]
    else:
        values += [m.group(2).strip("'") for m in _PASSWORD_IN_DSN.finditer(url)]
    found: set[str] = set()
    for value in values:
        for candidate in (value, unquote(value), unquote(value, errors="backslashreplace")):
            found.add(candidate)
            found.add(repr(candidate)[1:-1])  # how a repr() in an error message shows it
    return {secret for secret in found if secret}


def _words(secrets: set[str]) -> set[str]:
    words = set(secrets)
    for secret in secrets:
        words.update(re.split(r"[\s@/?#:&=,\[\]]+", secret))
    return {word for word in words if len(word) >= _SHORTEST_SCRUBBED}


def _blank_runs(text: str, secrets: set[str]) -> str:
    """Replace every run of at least ``_SHORTEST_RUN`` characters of ``text`` that is a
    substring of a secret with ``***``."""
    covered = [False] * len(text)
    for start in range(len(text)):
        end = start + _SHORTEST_RUN
        if end > len(text) or not any(text[start:end] in s for s in secrets):
            continue
        while end < len(text) and any(text[start : end + 1] in s for s in secrets):
            end += 1
        covered[start:end] = [True] * (end - start)
    if not any(covered):
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if not covered[index]:
            out.append(char)
        elif index == 0 or not covered[index - 1]:
            out.append("***")
    return "".join(out)


def url_problem(url: str) -> str | None:
    """What makes ``url`` unusable before anything connects (a NUL, an unencoded ``@``,
    ``/``, ``?`` or ``#`` in the user or password, a port that is not a number), with the
    fix; None when it looks well formed. Never quotes the password. A list of URLs is
    checked URL by URL."""
    urls = _NEXT_URL.split(url.strip())
    if len(urls) > 1:
        return next(filter(None, (url_problem(one) for one in urls)), None)
    if "\x00" in url:
        return "it contains a NUL character; remove it"
    if "://" not in url:
        return None  # key=value connection strings: libpq reports what it cannot read
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    if at and ("@" in userinfo or _cut(rest) < len(userinfo)):
        return (
            "its user or password holds an unencoded '@', '/', '?' or '#': percent-encode "
            "them (@ as %40, / as %2F, ? as %3F, # as %23)"
        )
    netloc = rest[: _cut(rest)].rpartition("@")[2]
    for host in netloc.split(","):  # libpq accepts host1:port1,host2:port2
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
        if port and not port.isdigit():
            return f"its port {port!r} is not a number: write the port as digits (host:port)"
    return None
