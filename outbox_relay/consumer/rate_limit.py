"""Rate limits of handlers: how they are written (checked when a handler is registered),
and the token bucket's arithmetic.

Pure: no clock and no database. :mod:`outbox_relay.consumer.gate` asks the store for
tokens and sleeps until they are due; the store keeps one number per bucket, its
*theoretical arrival time* (``tat``, the GCRA form of a token bucket), in
``<schema>.consumer_flow``, and moves it forward in one statement.

A limit of ``max`` per ``per`` seconds hands out one token every ``interval_s = per /
max`` seconds, with a burst of at most ``max`` after a quiet spell: in any window of
``w`` seconds at most ``max + w / interval_s`` tokens fall due, and under a backlog
exactly one per interval. Taking ``n`` tokens at once (a *lease*) moves ``tat`` to
``max(tat, now) + n * interval_s``; token ``i`` (0-based) of the lease is due at
``start + (i + 1) * interval_s - per``, or now if that has passed, where ``start`` is
``max(tat, now)`` before the lease.

A token of a lease that no delivery waited for expires ``n * interval_s`` (the lease's
span) after it fell due, and a pause drops them all: kept, they would come on top of the
burst the shared bucket refills meanwhile. The last token of a lease falls due at ``tat
- per`` at the earliest (``tat`` after the lease), so every token of it has expired by
the time the bucket is full again for anyone: after a quiet spell the burst across
processes is at most ``max``. (A window of ``w`` seconds under load may see up to the
lease size more than ``max + w / interval_s`` starts, leftovers used late: at most
``MAX_LEASE``, 2 % of a second's rate.)
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from outbox_relay.consumer.message import Message
from outbox_relay.errors import ConfigurationError

UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
# At high rates a lease takes this much of a second's tokens in one round trip: at 50/s
# one token a round trip, at 2,000/s forty.
LEASE_SPAN_S = 0.02
MAX_LEASE = 100
# The longest a RateLimited pause may ask for: held deliveries stay unacked meanwhile,
# and RabbitMQ closes a channel that holds one past its consumer_timeout (30 min).
MAX_PAUSE_S = 600.0
_FORM_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*/\s*([a-zA-Z]+)\s*$")
_UNIT_NAMES = {
    "s": "s",
    "sec": "s",
    "second": "s",
    "m": "m",
    "min": "m",
    "minute": "m",
    "h": "h",
    "hour": "h",
}


@dataclass(frozen=True)
class RateLimit:
    """At most ``max`` tokens per ``per`` seconds, with a burst of at most ``max``."""

    max: int
    per: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.max, bool) or not isinstance(self.max, int) or self.max < 1:
            raise ValueError(f"max must be a whole number of at least 1, not {self.max!r}")
        if not (isinstance(self.per, int | float) and math.isfinite(self.per) and self.per > 0):
            raise ValueError(f"per must be a positive number of seconds, not {self.per!r}")

    @property
    def interval_s(self) -> float:
        """Seconds between two tokens under a backlog."""
        return self.per / self.max

    @property
    def per_second(self) -> float:
        return self.max / self.per

    def describe(self) -> str:
        for unit, seconds in UNITS_S.items():
            if self.per == seconds:
                return f"{self.max}/{unit}"
        return f"{self.max} per {self.per:g}s"


def parse_rate_limit(value: str | RateLimit) -> RateLimit:
    """``"100/m"`` (``N/s``, ``N/m``, ``N/h``) or a :class:`RateLimit`; ValueError with the
    accepted forms otherwise."""
    if isinstance(value, RateLimit):
        return value
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004 - reported as a configuration error, like the rest
            f"{value!r}: write it as 'N/s', 'N/m' or 'N/h' (e.g. '100/m'), or "
            "RateLimit(max=N, per=seconds)"
        )
    match = _FORM_RE.match(value)
    unit = _UNIT_NAMES.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"{value!r} is not a rate: write 'N/s', 'N/m' or 'N/h' (e.g. '100/m'), or "
            "RateLimit(max=N, per=seconds) for another period"
        )
    number = float(match.group(1))
    if number < 1 or number != int(number):
        raise ValueError(
            f"{value!r}: the count must be a whole number of at least 1 (to stop a "
            "handler, stop its consumer; for less than one per second use '/m' or '/h')"
        )
    return RateLimit(max=int(number), per=UNITS_S[unit])


def pause_s(seconds: float) -> float:
    """A pause of ``seconds`` as the gate keeps it: at most MAX_PAUSE_S, and none (0) for
    anything not above 0, NaN included (RateLimited refuses those when it is raised)."""
    return min(seconds, MAX_PAUSE_S) if seconds > 0 else 0.0


def stored_key(limit: RateLimit, key: str) -> str:
    """The bucket's key in ``consumer_flow``: the limit, then the key (``"100/s|acme"``,
    ``"100/s|"`` for the default bucket). A bucket's ``tat`` is kept in the limit's own
    units, up to a period ahead and more with waiters: under a changed limit it would
    hold the handler back by the old period (a limit raised from 1/h to 100/s waited up to
    an hour), so a changed limit starts a bucket of its own. During a rolling update the
    old and the new limit then each hold, side by side; the old bucket's row stays, unused.
    """
    return f"{limit.describe()}|{key}"


def lease_size(limit: RateLimit) -> int:
    """How many tokens to take in one round trip: one at modest rates, a small batch at
    high ones. Tokens of a lease not used at once serve the next deliveries (a process
    holds at most one lease per bucket, so at most MAX_LEASE tokens early)."""
    return max(1, min(MAX_LEASE, limit.max, math.floor(limit.per_second * LEASE_SPAN_S)))


def lease_span_s(limit: RateLimit, count: int) -> float:
    """How far a lease of ``count`` tokens moves the bucket's ``tat``."""
    return count * limit.interval_s


def due_offsets(limit: RateLimit, *, start_s: float, count: int) -> list[float]:
    """Seconds from now until each token of a lease is due. ``start_s`` is ``max(tat,
    now) - now`` before the lease (what the store returns), never negative."""
    start = max(0.0, start_s)
    return [max(0.0, start + (i + 1) * limit.interval_s - limit.per) for i in range(count)]


def next_tat(limit: RateLimit, *, tat: float, now: float, count: int) -> float:
    """The bucket's ``tat`` after a lease of ``count`` tokens at ``now`` (the store's
    statement does the same; the unit tests drive this one)."""
    return max(tat, now) + lease_span_s(limit, count)


# -- which bucket a message takes its token from -------------------------------------

KeyFunction = Callable[[Message], object]
DEFAULT_BUCKET = ""  # messages without the key (or with an empty one) share this bucket
MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class KeySpec:
    """Where a message's rate-limit key is: ``header:NAME``, ``body:FIELD`` (a field of a
    JSON object body) or a callable taking the :class:`Message`."""

    source: str  # "header", "body" or "callable"
    name: str = ""
    function: KeyFunction | None = None

    def describe(self) -> str:
        if self.source == "callable":
            return f"key {getattr(self.function, '__qualname__', 'callable')}()"
        return f"key {self.source}:{self.name}"

    def key_of(self, message: Message) -> str:
        """The bucket of ``message``: its key as text, or DEFAULT_BUCKET when it has none.
        Never raises for what a message contains."""
        value: object
        if self.source == "header":
            value = (message.headers or {}).get(self.name)
        elif self.source == "body":
            body = message.body
            value = body.get(self.name) if isinstance(body, Mapping) else None
        else:
            assert self.function is not None  # noqa: S101 - set for callables by parse_key
            try:
                value = self.function(message)
            except Exception:  # noqa: BLE001 - a key that cannot be read: the default bucket
                value = None
        if value is None or isinstance(value, bool | dict | list):
            return DEFAULT_BUCKET
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return str(value)[:MAX_KEY_CHARS]


def parse_key(value: str | KeyFunction) -> KeySpec:
    """``"header:tenant"``, ``"body:tenant"`` or a callable; ValueError with the forms."""
    if callable(value):
        return KeySpec("callable", function=value)
    if isinstance(value, str):
        source, _, name = value.partition(":")
        if source in ("header", "body") and name.strip():
            return KeySpec(source, name=name.strip())
    raise ValueError(
        f"{value!r} names no key: write 'header:NAME' (a message header), 'body:FIELD' "
        "(a field of the JSON body) or pass a function of the message"
    )


# -- a handler's settings, checked when it is registered --------------------------------


def flow_settings(
    label: str,
    queue: str,
    rate_limit: str | RateLimit | None,
    rate_limit_key: str | KeyFunction | None,
    payload_type: type | None = None,
) -> tuple[RateLimit | None, KeySpec | None]:
    """``rate_limit`` and ``rate_limit_key`` parsed; ConfigurationError naming the handler
    and the fix."""
    where = f"handler {label} (queue {queue!r})"
    try:
        limit = None if rate_limit is None else parse_rate_limit(rate_limit)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: rate_limit: {exc}") from exc
    try:
        key = None if rate_limit_key is None else parse_key(rate_limit_key)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: rate_limit_key: {exc}") from exc
    if key is not None and key.source == "body" and payload_type is not None:
        fields = payload_fields(payload_type)
        if fields is not None and key.name not in fields:
            raise ConfigurationError(
                f"{where}: rate_limit_key: {payload_type.__name__} has no field "
                f"{key.name!r}; name one of {', '.join(sorted(fields))}"
            )
    if key is not None and limit is None:
        raise ConfigurationError(
            f"{where}: rate_limit_key gives each key its own bucket of the handler's "
            "rate_limit: set rate_limit too (e.g. rate_limit='10/s')"
        )
    return limit, key


def payload_fields(payload_type: type) -> set[str] | None:
    """The field names of a payload type (dataclass, TypedDict, pydantic model, msgspec
    Struct); None when they cannot be read."""
    try:
        return set(typing.get_type_hints(payload_type))
    except Exception:  # noqa: BLE001 - unresolvable annotations: do not guess
        return None
