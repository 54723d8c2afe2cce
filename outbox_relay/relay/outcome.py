"""What happened to each row of a batch at the broker, and what the relay does about it."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from outbox_relay.message import OutboxRow


class Status(enum.Enum):
    CONFIRMED = "confirmed"  # the broker confirmed it: delete the row
    FAILED = "failed"  # the broker refused it (nack, unroutable, missing exchange): retry later
    # Not seen by the broker (the channel died first, or a message with its id was out):
    # send again, no attempt lost.
    UNSENT = "unsent"


class Reason(str, enum.Enum):
    """Why the broker refused a row; the label of ``outbox_relay_failed_total``."""

    UNROUTABLE = "unroutable"  # returned: no queue bound for the routing key
    NACKED = "nacked"  # the broker nacked it
    MISSING_EXCHANGE = "missing_exchange"
    CHANNEL_CLOSED = "channel_closed"  # the broker closed the channel over it
    UNENCODABLE = "unencodable"  # a header or routing key AMQP cannot carry
    TOO_LARGE = "too_large"  # over the broker's max_message_size
    # The broker closed the connection over it (a hard error such as 501 FRAME_ERROR).
    BROKER_REFUSED = "broker_refused"

    @property
    def permanent(self) -> bool:
        """Whether no retry can help on its own, so the row is marked dead at once
        instead of holding its key back through every attempt: a row AMQP cannot carry
        never will be, and a message over the broker's max_message_size stays over it
        until someone raises the limit (then `outbox-relay failed retry`); each retry
        would close the channel again and resend the batch's unconfirmed rows; a
        message the broker closed the whole connection over is malformed for it. A
        missing exchange or binding may be created in the meantime, so those retry."""
        return self in (Reason.UNENCODABLE, Reason.TOO_LARGE, Reason.BROKER_REFUSED)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    error: str | None = None
    reason: Reason | None = None

    @classmethod
    def confirmed(cls) -> Outcome:
        return _CONFIRMED

    @classmethod
    def failed(cls, error: str, reason: Reason) -> Outcome:
        return cls(Status.FAILED, error, reason)

    @classmethod
    def unsent(cls) -> Outcome:
        return _UNSENT

    @classmethod
    def suspect(cls, error: str, reason: Reason) -> Outcome:
        """Unconfirmed when the broker closed the channel or the connection over one of
        several such rows, not knowing which: send again, in smaller batches (see
        :mod:`outbox_relay.relay.isolation`), no attempt lost."""
        return cls(Status.UNSENT, error, reason)

    @property
    def suspected(self) -> bool:
        return self.status is Status.UNSENT and self.reason is not None


_CONFIRMED = Outcome(Status.CONFIRMED)
_UNSENT = Outcome(Status.UNSENT)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed row as the store records it."""

    row_id: int
    error: str
    retry_in_s: float
    dead: bool
    reason: Reason = Reason.CHANNEL_CLOSED


_PRECONDITION_FAILED = 406
# Connection-level hard errors the broker raises over what a client sent (AMQP 0-9-1):
# FRAME_ERROR, SYNTAX_ERROR, COMMAND_INVALID, CHANNEL_ERROR, UNEXPECTED_FRAME, NOT_ALLOWED,
# NOT_IMPLEMENTED. Not CONNECTION_FORCED (320, an operator or a shutdown), RESOURCE_ERROR
# (506) nor INTERNAL_ERROR (541): those are the broker's state, an outage.
_REFUSALS = frozenset({501, 502, 503, 504, 505, 530, 540})


def refused_by_broker(reply_code: int | None) -> bool:
    """Whether the broker closed the connection with ``reply_code`` because of something
    the client sent, as opposed to being down, restarted or closed by an operator."""
    return reply_code in _REFUSALS


# RabbitMQ's words when a message is over max_message_size (3.8 and later).
# ("configured" is missing when the limit is the broker's hard maximum).
_TOO_LARGE = re.compile(r"message size (\d+) is larger than (?:configured )?max size (\d+)")


def blame_channel_close(
    reply_code: int | None, reply_text: str, unresolved: Sequence[OutboxRow]
) -> tuple[OutboxRow, Outcome] | None:
    """The row whose publish made the broker close the channel, when its reply says
    which: a message over ``max_message_size`` is named by its size. None when the reply
    does not tell (the caller then blames the one unconfirmed row, or makes suspects of
    them all: see :mod:`outbox_relay.relay.isolation`)."""
    match = _TOO_LARGE.search(reply_text) if reply_code == _PRECONDITION_FAILED else None
    if match is None:
        return None
    size, limit = int(match.group(1)), int(match.group(2))
    for row in unresolved:
        if len(row.payload) == size:
            return row, Outcome.failed(
                f"the payload is {size} bytes, over the broker's max_message_size of {limit}: "
                "raise max_message_size on the broker, or publish a reference to the data",
                Reason.TOO_LARGE,
            )
    return None


_ACCESS_REFUSED = 403
# RabbitMQ's words when the user may not write to an exchange.
_EXCHANGE_REFUSED = re.compile(r"access to exchange '(.*)' in vhost '(.*)' refused for user '(.*)'")
# How RabbitMQ names the default exchange "" in permissions and their errors.
DEFAULT_EXCHANGE_PERMISSION_NAME = "amq.default"


def blame_access_refused(
    reply_code: int | None, reply_text: str, unresolved: Sequence[OutboxRow]
) -> dict[int, Outcome]:
    """The rows to an exchange the broker refused the relay's user access to, when the
    reply names it: each fails (and is retried: the permission may be granted)."""
    match = _EXCHANGE_REFUSED.search(reply_text) if reply_code == _ACCESS_REFUSED else None
    if match is None:
        return {}
    exchange, vhost, user = match.groups()
    outcome = Outcome.failed(
        f"the broker refused user '{user}' access to exchange '{exchange}' on vhost "
        f"'{vhost}' ({reply_code} {reply_text}): grant the relay's user write permission "
        "on it (rabbitmqctl set_permissions)",
        Reason.CHANNEL_CLOSED,
    )
    return {
        row.id: outcome
        for row in unresolved
        if (row.exchange or DEFAULT_EXCHANGE_PERMISSION_NAME) == exchange
    }


def unroutable(exchange: str, routing_key: str, reply: str) -> str:
    """The error of a message the broker returned as unroutable (``reply``: its code and
    text): no queue took it."""
    if not exchange:
        return (
            f"unroutable: no queue named '{routing_key}' exists for the default exchange to "
            f"route to ({reply}); declare the queue (`outbox-relay topology apply`), or fix "
            "the routing key: through the default exchange it is the queue's name"
        )
    return (
        f"unroutable: no queue is bound to exchange '{exchange}' for routing key "
        f"'{routing_key}' ({reply}); bind a queue (`outbox-relay topology apply`) or give "
        "the exchange an alternate exchange"
    )
