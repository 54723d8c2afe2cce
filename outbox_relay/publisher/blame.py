"""Which rows made the broker close a channel (or the connection) under the batches out.

The broker's reply names the cause, seldom the message: a missing exchange (404) names
the exchange, a size limit (406) the size, an access refusal (403) the exchange; the
one row unconfirmed is to blame; otherwise every unconfirmed row is a suspect, sent
again in smaller batches until the culprit is alone (:mod:`outbox_relay.relay.isolation`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import pika.exceptions

from outbox_relay.amqp_url import describe_amqp_error
from outbox_relay.message import OutboxRow
from outbox_relay.relay.outcome import Outcome, Reason, blame_access_refused, blame_channel_close

_NOT_FOUND = 404


def culprits(
    error: BaseException,
    unresolved: Sequence[OutboxRow],
    *,
    missing_exchanges: Callable[[Collection[str]], dict[str, str]],
) -> dict[int, Outcome]:
    """Which of the ``unresolved`` (unconfirmed) rows made the broker close the channel
    or the connection with ``error``: the row its reply names, the one row unconfirmed,
    or, when there are several and nothing tells them apart, all of them as suspects.
    ``missing_exchanges`` asks the broker which exchanges do not exist (after a 404)."""
    if not unresolved:
        return {}
    code, text = getattr(error, "reply_code", None), str(getattr(error, "reply_text", ""))
    if code == _NOT_FOUND:
        missing = missing_exchanges({row.exchange for row in unresolved})
        if missing:
            return {
                row.id: Outcome.failed(missing[row.exchange], Reason.MISSING_EXCHANGE)
                for row in unresolved
                if row.exchange in missing
            }
    blamed = blame_channel_close(code, text, unresolved)
    if blamed is not None:
        row, outcome = blamed
        return {row.id: outcome}
    refused = blame_access_refused(code, text, unresolved)
    if refused:
        return refused
    said = describe_amqp_error(error)
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        reason, closed = Reason.BROKER_REFUSED, "the connection"
        fix = (
            "the message breaks a limit of AMQP or of the broker (501 FRAME_ERROR: its "
            "properties and headers are larger than the connection's frame_max); "
            "correct the row, then `outbox-relay failed retry` it"
        )
    else:
        reason, closed = Reason.CHANNEL_CLOSED, "the channel"
        fix = "see the broker's log for this message"
    if len(unresolved) == 1:
        return {
            unresolved[0].id: Outcome.failed(
                f"the broker closed {closed} over this message: {said}; {fix}", reason
            )
        }
    suspect = Outcome.suspect(
        f"the broker closed {closed} over one of {len(unresolved)} unconfirmed messages: {said}",
        reason,
    )
    return {row.id: suspect for row in unresolved}
