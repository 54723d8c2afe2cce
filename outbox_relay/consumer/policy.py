"""Which failures of a handler are worth another attempt. Pure: no I/O.

A handler may name the exceptions that retry (``retry_on=``, like Celery's
``autoretry_for`` or Dramatiq's ``retry_when``) and those that are permanent
(``park_on=``). The decision, in this order:

1. :class:`~outbox_relay.consumer.errors.Reject` and a body that cannot be decoded or does
   not fit the payload type (:class:`~outbox_relay.consumer.errors.InvalidPayloadError`):
   parked at once, whatever the handler's lists say.
2. :class:`~outbox_relay.consumer.errors.Retry`: retried (the attempt counts; parked once
   ``max_attempts`` is reached), whatever the lists say: the handler asked for it.
3. An instance of a class in ``park_on``: parked at once, with the error. ``park_on``
   is read before ``retry_on``, so a subclass can be made permanent inside a family
   that retries (``retry_on=OSError, park_on=FileNotFoundError``).
4. With ``retry_on`` given, an instance of none of its classes: parked at once.
5. Anything else: retried.

Before any of this, the worker puts aside a failure caused by the handler's database
connection being lost (see
:meth:`~outbox_relay.store.inbox.HandlerSession.lost_connection`): that is the database
being unavailable, not a failure of the message, and it goes back to the queue without
spending an attempt. A handler that runs past its timeout is retried.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from outbox_relay.consumer.errors import Reject, Retry, UndecodableMessageError

ExceptionClasses = tuple[type[BaseException], ...]
# Their meaning is fixed: listing them in retry_on or park_on would contradict it.
_STEERING = (Retry, Reject, UndecodableMessageError)


class Verdict(enum.Enum):
    RETRY = "retry"  # another attempt, through a delay tier (parked when none is left)
    PARK = "park"  # to the parking lot at once


@dataclass(frozen=True)
class ErrorPolicy:
    """A handler's ``retry_on`` (None: every exception retries) and ``park_on``."""

    retry_on: ExceptionClasses | None = None
    park_on: ExceptionClasses = ()

    def verdict(self, exc: BaseException) -> Verdict:
        """What to do with a message whose handler raised ``exc``."""
        if isinstance(exc, Reject | UndecodableMessageError):
            return Verdict.PARK
        if isinstance(exc, Retry):
            return Verdict.RETRY
        if self.park_on and isinstance(exc, self.park_on):
            return Verdict.PARK
        if self.retry_on is not None and not isinstance(exc, self.retry_on):
            return Verdict.PARK
        return Verdict.RETRY

    def reason(self, exc: BaseException) -> str | None:
        """Why ``exc`` parks at once because of this policy (None when it does not)."""
        if isinstance(exc, Reject | UndecodableMessageError | Retry):
            return None
        name = type(exc).__qualname__
        if self.park_on and isinstance(exc, self.park_on):
            return f"{name} is in the handler's park_on: parked without retrying"
        if self.retry_on is not None and not isinstance(exc, self.retry_on):
            return f"{name} is not in the handler's retry_on: parked without retrying"
        return None


def exception_classes(
    value: type[BaseException] | Sequence[type[BaseException]] | None, *, option: str
) -> ExceptionClasses | None:
    """``value`` (one class or several) as a tuple; TypeError or ValueError naming what
    is wrong."""
    if value is None:
        return None
    classes: tuple[object, ...] = (value,)
    if not isinstance(value, type | str) and isinstance(value, Iterable):
        classes = tuple(value)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(
                f"{option}: {cls!r} is not an exception class; give classes such as "
                f"{option}=(TimeoutError, ConnectionError)"
            )
        if issubclass(cls, _STEERING):
            raise TypeError(
                f"{option}: {cls.__qualname__} keeps its own meaning (Retry retries, Reject "
                "and InvalidPayloadError park at once); leave it out"
            )
    if not classes:
        hint = " (to park every failure at once, use max_attempts=1)"
        raise ValueError(
            f"{option}: give at least one exception class, or leave {option} out"
            + (hint if option == "retry_on" else "")
        )
    return classes  # type: ignore[return-value]  # each checked above
